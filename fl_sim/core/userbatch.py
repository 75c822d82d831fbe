"""A user's local batch as their client sees it: photos, labels and the per-round shuffling seed."""

from __future__ import annotations

import zlib
from functools import lru_cache

import torch

from fl_sim.core.config import RunConfig
from fl_sim.core.data import UserData, open_dataset
from fl_sim.core.models import Head, user_labels


@lru_cache(maxsize=256)
def load_user(dataset: str, user: str, size: int, n_train: int, n_holdout: int) -> UserData:
    """One user's photos, split into the local batch and held-out photos (cached per process)."""
    ds = open_dataset(dataset)
    rec = next(r for r in ds.users() if r.user == user)
    imgs = ds.photos(user, size)
    return UserData(user=user, train=imgs[:n_train], holdout=imgs[n_train:n_train + n_holdout],
                    attributes=dict(rec.attributes))


def user_batch(cfg: RunConfig, user: str, heads: list[Head]) -> tuple[UserData, torch.Tensor, torch.Tensor]:
    """(user data, train labels, holdout labels) for ``user`` under ``cfg``."""
    d = cfg.data
    data = load_user(d.dataset, user, d.image_size, d.photos_per_user, d.holdout_per_user)
    lab = torch.tensor(user_labels(heads, user, data.attributes), dtype=torch.long)
    return data, lab.expand(len(data.train), -1), lab.expand(len(data.holdout), -1)


def local_seed(seed: int, rnd: int, user: str) -> int:
    """Per-user, per-round shuffling seed: stable across processes (no Python hash salt)."""
    return zlib.crc32(f"{seed}:{rnd}:{user}".encode())
