"""`synthfaces-split:K`: each embedded identity split into K users of disjoint photos — many users, for cost benches.

Users cut from one identity look alike, so leakage measured on them would flatter re-identification's hard case and
blur its easy one: this dataset is for the system's cost (round time, memory, store size), never for leakage."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fl_sim.core.data.base import FaceDataset, UserRecord
from fl_sim.core.errors import DataError

MAX_PARTS = 80  # an identity holds 80 photos: at most one photo per user


class SplitFaces(FaceDataset):
    """The users of ``base`` (``synthfaces``), each split into ``parts`` users ``<user>-<k>`` of disjoint photos."""

    def __init__(self, base: FaceDataset, parts: int) -> None:
        self.base, self.parts = base, parts
        self.spec = f"synthfaces-split:{parts}"
        self._users = [UserRecord(f"{r.user}-{k}", r.n_photos // parts, dict(r.attributes))
                       for r in base.users() for k in range(parts)]

    def users(self) -> list[UserRecord]:
        return list(self._users)

    def photos_uint8(self, user: str) -> np.ndarray:
        base_user, _, k = user.rpartition("-")
        if not base_user or not k.isdigit() or not 0 <= int(k) < self.parts:
            raise DataError(f"no user {user!r} in {self.spec}")
        photos = self.base.photos_uint8(base_user)  # read on demand: nothing per user is held here
        n = len(photos) // self.parts
        return photos[int(k) * n:(int(k) + 1) * n]


@lru_cache(maxsize=4)
def open_split(parts: int) -> SplitFaces:
    from fl_sim.core.data.synthfaces import open_synthfaces

    if not 1 <= parts <= MAX_PARTS:
        raise DataError(f"synthfaces-split:{parts}: K must be 1..{MAX_PARTS} (an identity holds 80 photos)")
    return SplitFaces(open_synthfaces("users"), parts)
