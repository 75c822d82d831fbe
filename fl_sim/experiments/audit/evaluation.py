"""Scoring the audit: the identity threshold and its calibration photos, SSIM, nearest-neighbour identification."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fl_sim.core.metrics import ssim


def equal_error_threshold(same: np.ndarray, diff: np.ndarray) -> float:
    """The similarity at which the same-identity miss rate equals the different-identity accept rate."""
    cands = np.unique(np.concatenate([same, diff]))
    miss = np.searchsorted(np.sort(same), cands, side="left") / len(same)          # same < thr
    accept = 1.0 - np.searchsorted(np.sort(diff), cands, side="left") / len(diff)  # diff >= thr
    return float(cands[int(np.argmin(np.abs(miss - accept)))])


@dataclass
class FaceCalibration:
    """The identity evaluator's same-identity threshold and the unrelated-photo similarity."""

    threshold: float
    unrelated_similarity: float
    same_mean: float
    how: str


def face_calibration(photos: list[torch.Tensor]) -> FaceCalibration:
    """From several photos of each of several users (not the audited photos): the equal-error threshold
    between same-user and different-user SFace similarities, and the mean different-user similarity."""
    from fl_sim.core.evaluators.face import sface

    embs = [sface().embed(p) for p in photos]
    same, diff = [], []
    for i, e in enumerate(embs):
        s = e @ e.T
        same.append(s[np.triu_indices(len(e), 1)])
        for f in embs[i + 1:]:
            diff.append((e @ f.T).ravel())
    same_a, diff_a = np.concatenate(same), np.concatenate(diff)
    thr = equal_error_threshold(same_a, diff_a)
    return FaceCalibration(threshold=thr, unrelated_similarity=float(diff_a.mean()), same_mean=float(same_a.mean()),
                           how=f"equal-error threshold of SFace similarity between {len(same_a)} same-user and "
                               f"{len(diff_a)} different-user photo pairs ({len(photos)} users, audited photos excluded)")


def nn_identified(recon: torch.Tensor, originals: torch.Tensor) -> np.ndarray:
    d = torch.cdist(recon.flatten(1).double(), originals.flatten(1).double())
    return (d.argmin(1) == torch.arange(len(recon))).numpy()


def per_image_ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return np.array([ssim(a[i:i + 1], b[i:i + 1]) for i in range(len(a))])


def unrelated_ssim(originals: torch.Tensor) -> float:
    """Mean SSIM between different audited images: the 'tells nothing' line when there are no faces."""
    vals = [ssim(originals[i:i + 1], originals[j:j + 1]) for i in range(len(originals)) for j in range(len(originals)) if i != j]
    return float(np.mean(vals)) if vals else float("nan")


def calibration_photos(ds: Any, size: int, audited_users: int, per_user: int = 8, n_users: int = 30) -> list[torch.Tensor]:
    """Photos 0..per_user-1 of users spread over the dataset (the audited photos are the last ones)."""
    from fl_sim.core.data.base import to_tensor

    users = [u for u in ds.users() if u.n_photos > per_user]
    step = max(1, len(users) // n_users)
    return [to_tensor(ds.photos_uint8(u.user)[:per_user], size) for u in users[::step][:n_users]]


def calibration_images(ds: Any, size: int, n: int = 2000) -> torch.Tensor:
    """About n images spread over the dataset's users (first photos of each), without decoding all of it."""
    from fl_sim.core.data.base import to_tensor

    users = ds.users()
    per_user = max(1, math.ceil(n / max(1, len(users))))
    out, total = [], 0
    for u in users[:: max(1, len(users) // n)]:
        arr = ds.photos_uint8(u.user)[:per_user]
        out.append(to_tensor(arr, size))
        total += len(arr)
        if total >= n:
            break
    return torch.cat(out)[:n]


def attribute_accuracy(pred: list[str], truth: list[str | None]) -> float | None:
    pairs = [(p, t) for p, t in zip(pred, truth) if t is not None]
    return float(np.mean([p == t for p, t in pairs])) if pairs else None
