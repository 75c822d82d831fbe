"""Hugging Face datasets split into users by an identity column (flwr-datasets NaturalIdPartitioner)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fl_sim.core.data.base import FaceDataset, UserRecord, stack_same_size
from fl_sim.core.errors import DataError


class HFFaces(FaceDataset):
    """A `datasets.Dataset` partitioned by ``id_column``: one user per identity value.

    Optional columns ``gender`` (0/1 or female/male) and ``age`` (years) become attributes.
    """

    def __init__(self, dataset: Any, id_column: str, spec: str = "hf:<local>") -> None:
        from flwr_datasets.partitioner import NaturalIdPartitioner

        self.spec = spec
        cols = list(dataset.column_names)
        if id_column not in cols:
            raise DataError(f"{spec}: no identity column {id_column!r} (columns: {', '.join(cols)})")
        self._image_col = next((c for c in ("image", "img", "photo") if c in cols), None)
        if self._image_col is None:
            raise DataError(f"{spec}: no image column (looked for image, img, photo in {', '.join(cols)})")
        self._ds = dataset
        self._part = NaturalIdPartitioner(partition_by=id_column)
        self._part.dataset = dataset
        self._n = self._part.num_partitions  # builds the id -> partition mapping
        self._ids = {str(v): k for k, v in self._part.partition_id_to_natural_id.items()}

    def _partition(self, user: str) -> Any:
        if user not in self._ids:
            raise DataError(f"{self.spec}: no identity {user!r}")
        return self._part.load_partition(self._ids[user])

    def users(self) -> list[UserRecord]:
        ids = self._part.partition_id_to_natural_id
        counts: dict[str, int] = {}
        for v in self._ds[self._part._partition_by]:  # noqa: SLF001 - the partitioner's own column
            counts[str(v)] = counts.get(str(v), 0) + 1
        out = []
        for pid in sorted(ids):
            uid = str(ids[pid])
            out.append(UserRecord(user=uid, n_photos=counts.get(uid, 0), attributes=self._attributes(uid)))
        return out

    def _attributes(self, user: str) -> dict[str, str | None]:
        from fl_sim.core.data.folders import _norm_age, _norm_gender

        part = self._partition(user)
        attrs: dict[str, str | None] = {"gender": None, "age_band": None}
        if "gender" in part.column_names and len(part):
            attrs["gender"] = _norm_gender(str(part[0]["gender"]), f"{self.spec} identity {user}")
        if "age" in part.column_names and len(part):
            attrs["age_band"] = _norm_age(str(part[0]["age"]), f"{self.spec} identity {user}")
        return attrs

    def photos_uint8(self, user: str) -> np.ndarray:
        part = self._partition(user)
        imgs = []
        for k, im in enumerate(part[self._image_col]):
            arr = np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.uint8)
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise DataError(f"{self.spec}: identity {user} image {k} is not an RGB image")
            h, w = arr.shape[:2]
            s = min(h, w)
            imgs.append(np.ascontiguousarray(arr[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]))
        return stack_same_size(imgs, f"{self.spec} identity {user}")


def load_hf(name: str, id_column: str) -> HFFaces:
    """Download (or read from the local HF cache) a hub dataset; needs the network the first time."""
    try:
        import datasets

        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one line
        reason = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
        raise DataError(f"cannot load Hugging Face dataset {name!r} (needs the network or a local cache): {reason}") from None
    return HFFaces(ds, id_column, spec=f"hf:{name}:{id_column}")
