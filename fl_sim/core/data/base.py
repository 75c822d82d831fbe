"""Dataset interface: users who each hold photos of one person, plus their attributes."""

from __future__ import annotations

import io
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from fl_sim.core.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm")
# Attribute records use these names; a dataset that cannot say leaves the value None.
ATTRIBUTES = ("gender", "age_band")
# Photos the evaluations count back from (the audit's targets, the prior eval's held-out photos): a user's
# photos past the 80th exist for the attack bench's batch 100 only, so those figures stay on the same photos.
EVAL_PHOTOS = 80


@dataclass(frozen=True)
class UserRecord:
    """One identity in a dataset: its id, how many photos it has, its attributes."""

    user: str
    n_photos: int
    attributes: dict[str, str | None] = field(default_factory=dict)


@dataclass
class UserData:
    """What one simulated user holds: training photos, held-out photos, attributes.

    Images are float tensors (N, 3, H, W) in [-1, 1].
    """

    user: str
    train: torch.Tensor
    holdout: torch.Tensor
    attributes: dict[str, str | None]


class FaceDataset(ABC):
    """A source of identity-labelled face photos."""

    spec: str = ""
    attribute_names: tuple[str, ...] = ATTRIBUTES

    @abstractmethod
    def users(self) -> list[UserRecord]:
        """Every identity, in a stable order."""

    @abstractmethod
    def photos_uint8(self, user: str) -> np.ndarray:
        """All photos of ``user`` as uint8 (N, H, W, 3) RGB, square, in a stable order."""

    def photos(self, user: str, size: int) -> torch.Tensor:
        """All photos of ``user`` at ``size`` x ``size`` as floats in [-1, 1]."""
        return to_tensor(self.photos_uint8(user), size)

    def check(self, users: list[str]) -> None:
        """Raise a ``DataError`` naming the first photo of ``users`` that cannot be read; before a run starts.

        Datasets of image files decode each one (nothing is kept); in-memory ones have nothing to check.
        """


def to_tensor(arr: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [-1, 1]; area-downsampling keeps faces sharp."""
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    if x.shape[-1] != size or x.shape[-2] != size:
        mode = "area" if x.shape[-1] > size else "bilinear"
        x = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return (x / 127.5 - 1.0).clamp(-1.0, 1.0)


def decode_image(data: bytes | Path, where: str) -> np.ndarray:
    """Decode one image file to uint8 (S, S, 3) RGB, center-cropped to a square."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as opened:
            im = opened.convert("RGB")
            w, h = im.size
            s = min(w, h)
            if w != h:
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {where}: {exc.__class__.__name__}") from None


def check_images(paths: list[Path]) -> None:
    """Decode every file (pixels included, so a truncated one fails too); a ``DataError`` names the first bad one."""
    for p in paths:
        try:
            with Image.open(p) as opened:
                opened.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else exc.__class__.__name__
            raise DataError(f"cannot read image {p}: {reason}") from None


def stack_same_size(images: list[np.ndarray], where: str) -> np.ndarray:
    """Stack images, resizing any whose side differs from the first (real folders mix sizes)."""
    if not images:
        raise DataError(f"no images in {where}")
    s = images[0].shape[0]
    out = []
    for im in images:
        if im.shape[0] != s:
            im = np.asarray(Image.fromarray(im).resize((s, s), Image.Resampling.BILINEAR))
        out.append(im)
    return np.stack(out)


def choose_users(dataset: FaceDataset, *, n_users: int, need: int) -> list[UserRecord]:
    """The first ``n_users`` identities with at least ``need`` photos (others skipped with a warning)."""
    chosen, skipped = [], []
    for rec in dataset.users():
        if rec.n_photos < need:
            skipped.append(rec.user)
            continue
        chosen.append(rec)
        if len(chosen) == n_users:
            break
    if len(chosen) < n_users:
        raise DataError(f"dataset {dataset.spec} has {len(chosen)} users with >= {need} photos, "
                        f"{n_users} requested (config key 'users'; {len(skipped)} with fewer skipped)")
    if skipped:
        log.warning("skipped %d users with fewer than %d photos in %s", len(skipped), need, dataset.spec)
    return chosen


def select_users(dataset: FaceDataset, *, n_users: int, photos_per_user: int, holdout_per_user: int,
                 min_photos: int, size: int) -> list[UserData]:
    """The first ``n_users`` identities with enough photos, split into train and held-out photos."""
    need = max(min_photos, photos_per_user + holdout_per_user)
    out = []
    for rec in choose_users(dataset, n_users=n_users, need=need):
        imgs = dataset.photos(rec.user, size)
        out.append(UserData(user=rec.user, train=imgs[:photos_per_user],
                            holdout=imgs[photos_per_user:photos_per_user + holdout_per_user],
                            attributes=dict(rec.attributes)))
    return out
