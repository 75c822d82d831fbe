"""Shared fixtures: small photo folders made on the fly, so tests need no embedded data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent
FL_SIM = REPO / ".venv" / "bin" / "fl-sim"


def make_face_folder(root: Path, users: int = 4, photos: int = 6, size: int = 16, seed: int = 0,
                     attributes: bool = True) -> Path:
    """PATH/<user>/<k>.png: each user a distinct colour pattern plus per-photo noise."""
    rng = np.random.default_rng(seed)
    genders = ["female", "male"]
    rows = ["user,gender,age"]
    for u in range(users):
        base = rng.uniform(0, 255, size=(size, size, 3))
        d = root / f"user{u:02d}"
        d.mkdir(parents=True)
        for k in range(photos):
            img = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{k:02d}.png")
        rows.append(f"user{u:02d},{genders[u % 2]},{20 + 15 * (u % 3)}")
    if attributes:
        (root / "attributes.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def face_folder(tmp_path: Path) -> Path:
    return make_face_folder(tmp_path / "faces")
