"""A dataset kind of one's own: every photo in one flat folder, named <user>_<k>.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fl_sim.core.data import FaceDataset, UserRecord
from fl_sim.core.data.base import decode_image, stack_same_size
from fl_sim.core.errors import DataError

SUFFIXES = (".png", ".jpg", ".jpeg")


class FlatFolder(FaceDataset):
    """PATH/<user>_<k>.<png|jpg>: the user is the file name up to its last underscore; no attributes."""

    def __init__(self, path: str) -> None:
        self.root = Path(path).expanduser()
        self.spec = f"flatfolder:{path}"
        if not self.root.is_dir():
            raise DataError(f"flatfolder dataset path is not a folder: {self.root}")
        self._files: dict[str, list[Path]] = {}
        for p in sorted(self.root.iterdir()):
            if p.suffix.lower() in SUFFIXES and "_" in p.stem:
                self._files.setdefault(p.stem.rpartition("_")[0], []).append(p)
        if not self._files:
            raise DataError(f"no <user>_<k>.png photos in {self.root}")

    def users(self) -> list[UserRecord]:
        return [UserRecord(user=u, n_photos=len(fs), attributes={"gender": None, "age_band": None})
                for u, fs in self._files.items()]

    def photos_uint8(self, user: str) -> np.ndarray:
        if user not in self._files:
            raise DataError(f"no photos of {user!r} in {self.root}")
        return stack_same_size([decode_image(p, str(p)) for p in self._files[user]], str(self.root))
