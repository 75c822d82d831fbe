"""Identity embeddings cached on disk by content: the same pixels under the same evaluator code embed once.

A 1,000-user run's scorer embeds every user's photos under both evaluators (dlib: ~0.08 s a photo on this CPU);
every later run, bench cell or inspect on the same users reads them back instead. The key is the SHA-256 of the
evaluator's name, its code (the module that defines it and the shared image plumbing) and the uint8 pixels it would
see, so a changed photo, resolution or evaluator is a new key and a stale entry cannot be read. Entries appear by one
rename of a whole file; where the cache folder cannot be written, embeddings are computed and not kept.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fl_sim.core.assets import cache_dir
from fl_sim.core.evaluators.face import identity_embedder
from fl_sim.core.evaluators.images import to_uint8_hwc


def cache_root() -> Path:
    """$FL_SIM_CACHE/embeddings, else $XDG_CACHE_HOME/fl-sim/embeddings, else ~/.cache/fl-sim/embeddings."""
    return cache_dir() / "embeddings"


@lru_cache(maxsize=None)
def code_tag(evaluator: str) -> str:
    """Digest of the code that turns pixels into this evaluator's embedding."""
    h = hashlib.sha256(evaluator.encode())
    module = sys.modules[type(identity_embedder(evaluator)).__module__]
    for path in sorted({str(module.__file__), str(sys.modules[to_uint8_hwc.__module__].__file__)}):
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def embed(evaluator: str, images: torch.Tensor | np.ndarray, root: Path | None = None) -> np.ndarray:
    """The evaluator's embeddings of ``images`` ([-1, 1] (N, 3, H, W) or uint8 (N, H, W, 3)), from the cache when
    these pixels were embedded before by the same code."""
    arr = images if isinstance(images, np.ndarray) and images.dtype == np.uint8 else to_uint8_hwc(images)
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(code_tag(evaluator).encode())
    h.update(repr(arr.shape).encode())
    h.update(arr.tobytes())
    key = h.hexdigest()
    path = (root or cache_root()) / evaluator / key[:2] / f"{key}.npy"
    try:
        hit: np.ndarray = np.load(path)
        if hit.shape[0] == len(arr):
            return hit
    except (OSError, ValueError):
        pass
    out: np.ndarray = identity_embedder(evaluator).embed(arr)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, out)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError:  # a read-only or full cache: the embedding is still right, only not kept
        pass
    return out
