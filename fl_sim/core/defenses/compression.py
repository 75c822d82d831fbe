"""Update compression (pruning, top-k, stochastic quantisation) applied to the selected users' updates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from fl_sim.core.defenses.base import DEFENSES, Defense, Record, RunView
from fl_sim.core.fields import _f
from fl_sim.core.users import USERS_DOC


@dataclass
class CompressionConfig:
    """Classical defenses on the update (after - before) before it is sent."""

    topk: float = _f(0.0, "top-k sparsification: fraction of entries kept, largest magnitudes over the whole "
                          "update (0: off)", min=0.0, max=1.0)
    prune: float = _f(0.0, "gradient pruning: fraction of each layer's smallest-magnitude entries zeroed (0: off)",
                      min=0.0, max=0.999)
    quantize_bits: int = _f(0, "uniform quantisation per tensor to this many bits, stochastic rounding (0: off)",
                            min=0, max=16)
    users: str = _f("all", USERS_DOC)


def compress_update(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], spec: dict[str, Any],
                    seed: int) -> dict[str, torch.Tensor]:
    """New weights = before + compressed (after - before): pruning, top-k, then quantisation."""
    keys = [k for k in after if after[k].is_floating_point()]
    delta = {k: (after[k] - before[k]).float() for k in keys}
    if spec.get("prune"):
        for k, v in delta.items():
            m = int(spec["prune"] * v.numel())
            if m:
                cut = v.abs().flatten().kthvalue(m).values
                delta[k] = torch.where(v.abs() > cut, v, torch.zeros_like(v))
    if spec.get("topk"):
        flat = torch.cat([v.flatten() for v in delta.values()])
        keep = max(1, int(math.ceil(spec["topk"] * flat.numel())))
        cut = flat.abs().topk(keep).values[-1]
        delta = {k: torch.where(v.abs() >= cut, v, torch.zeros_like(v)) for k, v in delta.items()}
    if spec.get("quantize_bits"):
        gen = torch.Generator().manual_seed(seed)
        levels = 2 ** int(spec["quantize_bits"]) - 1
        for k, v in delta.items():
            lo, hi = v.min(), v.max()
            if hi > lo:
                scaled = (v - lo) / (hi - lo) * levels
                # Stochastic rounding: unbiased, so averaging many users' updates keeps the mean.
                q = torch.floor(scaled + torch.rand(v.shape, generator=gen))
                delta[k] = q / levels * (hi - lo) + lo
    out = dict(after)
    for k in keys:
        out[k] = (before[k].float() + delta[k]).to(after[k].dtype)
    return out


class Compression(Defense[CompressionConfig]):
    """The client compresses its update after training; the server sees the compressed update."""

    name = "compression"
    help = "compression"
    config_type = CompressionConfig
    section_rank, record_rank = 2, 1
    per_user = True

    def active(self, section: CompressionConfig) -> bool:
        return section.topk > 0 or section.prune > 0 or section.quantize_bits > 0

    def record(self, section: CompressionConfig, run: RunView) -> Record:
        return {k: v for k, v in (("topk", section.topk), ("prune", section.prune),
                                  ("quantize_bits", section.quantize_bits)) if v}

    def describe(self, rec: Record) -> str:
        return " ".join(f"{k} {v:g}" for k, v in rec.items())

    def visibility(self, rec: Record) -> str:
        return "compression hides small entries but keeps the update's largest ones"

    def after_train(self, rec: Record, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                    seed: int) -> dict[str, torch.Tensor]:
        return compress_update(before, after, rec, seed)


COMPRESSION = Compression()
DEFENSES.add(COMPRESSION.name, COMPRESSION, COMPRESSION.help)
