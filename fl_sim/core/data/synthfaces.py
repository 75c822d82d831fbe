"""The embedded synthetic identities (`synthfaces`, `synthfaces:prior`): JPEGs in zip archives."""

from __future__ import annotations

import json
import threading
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fl_sim.core.data.base import FaceDataset, UserRecord, decode_image
from fl_sim.core.assets import ASSET_ROOT
from fl_sim.core.errors import DataError

ASSET_DIR = ASSET_ROOT / "synthfaces"


class SynthFaces(FaceDataset):
    """One split (``users`` or ``prior``) of the embedded identities."""

    def __init__(self, split: str = "users", root: Path = ASSET_DIR) -> None:
        if split not in ("users", "prior"):
            raise DataError(f"synthfaces has splits 'users' and 'prior', not {split!r}")
        self.split = split
        self.root = root
        self.spec = "synthfaces" if split == "users" else f"synthfaces:{split}"
        self.archive = root / f"{split}.zip"
        if not self.archive.exists() or not (root / "identities.json").exists():
            raise DataError(f"embedded data missing at {self.archive} (run `make synth-data` to regenerate)")
        self._identities = [i for i in json.loads((root / "identities.json").read_text()) if i["split"] == split]
        self._lock = threading.Lock()
        self._zip: zipfile.ZipFile | None = None
        self._index: dict[str, list[str]] | None = None

    def _open(self) -> tuple[zipfile.ZipFile, dict[str, list[str]]]:
        if self._zip is None or self._index is None:
            zf = zipfile.ZipFile(self.archive)
            index: dict[str, list[str]] = {}
            for name in sorted(zf.namelist()):
                if name.endswith(".jpg"):
                    index.setdefault(name.split("/", 1)[0], []).append(name)
            self._zip, self._index = zf, index
        return self._zip, self._index

    def identities(self) -> list[dict[str, Any]]:
        """The raw identity records, with latent seeds and attribute votes."""
        return list(self._identities)

    def users(self) -> list[UserRecord]:
        return [UserRecord(user=i["id"], n_photos=i["photos"],
                           attributes={"gender": i["gender"], "age_band": i["age_band"]}) for i in self._identities]

    def photos_uint8(self, user: str) -> np.ndarray:
        with self._lock:
            zf, index = self._open()
            if user not in index:
                raise DataError(f"no user {user!r} in {self.archive}")
            blobs = [zf.read(n) for n in index[user]]
        return np.stack([decode_image(b, f"{self.archive}:{user}") for b in blobs])

    def all_photos_uint8(self) -> tuple[np.ndarray, np.ndarray]:
        """Every photo of the split and its identity index, in one pass over the archive."""
        with self._lock:
            zf, index = self._open()
            order = [i["id"] for i in self._identities]
            photos, owners = [], []
            for k, uid in enumerate(order):
                for name in index.get(uid, []):
                    photos.append(decode_image(zf.read(name), f"{self.archive}:{name}"))
                    owners.append(k)
        return np.stack(photos), np.asarray(owners)


@lru_cache(maxsize=4)
def open_synthfaces(split: str = "users") -> SynthFaces:
    return SynthFaces(split)
