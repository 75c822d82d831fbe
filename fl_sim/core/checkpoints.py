"""The global model after each round (runs/<id>/checkpoints/), kept so that a killed run can be resumed."""

from __future__ import annotations

import os
from pathlib import Path

import torch

DIR = "checkpoints"
KEEP = 2  # this round's and the one before: a kill between a checkpoint and its round's row leaves the earlier one


def path(run_dir: Path, rnd: int) -> Path:
    return run_dir / DIR / f"round_{rnd:05d}.pt"


def save(run_dir: Path, rnd: int, state: dict[str, torch.Tensor]) -> None:
    """Write round ``rnd``'s global model (whole or not at all: a temporary file renamed), then drop older ones."""
    target = path(run_dir, rnd)
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_suffix(".tmp")
    torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    os.replace(tmp, target)
    for old in target.parent.glob("round_*.pt"):
        if int(old.stem.split("_")[1]) <= rnd - KEEP:
            old.unlink(missing_ok=True)


def load(run_dir: Path, rnd: int) -> dict[str, torch.Tensor] | None:
    """Round ``rnd``'s global model, or None when it was not kept."""
    p = path(run_dir, rnd)
    return torch.load(p, weights_only=True) if p.is_file() else None
