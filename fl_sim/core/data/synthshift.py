"""The shifted synthetic identities (`synthshift`): a users-only folder-layout zip, read with FolderFaces."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from fl_sim.core.data.folders import FolderFaces
from fl_sim.core.assets import ASSET_ROOT, cache_dir
from fl_sim.core.errors import DataError

ASSET_DIR = ASSET_ROOT / "synthshift"
ARCHIVE = ASSET_DIR / "users.zip"
MANIFEST = ASSET_DIR / "manifest.json"


def extract_once(archive: Path, cache: Path) -> Path:
    """Extract ``archive`` into ``cache``/synthshift-<sha256 prefix> unless already there; return that folder.

    The folder only ever appears by one rename of a completely extracted temporary folder, so its
    existence means it is whole, and a changed archive gets a new folder rather than stale photos.
    """
    from fl_sim.core.data.synth import sha256

    target = cache / f"synthshift-{sha256(archive)[:16]}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthshift-", dir=cache))
    try:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts or "\\" in name:
                    raise DataError(f"unsafe entry {name!r} in {archive}")
            zf.extractall(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def identities() -> list[dict[str, Any]]:
    """Each user's latent record (seed, split code, index) from the manifest, as in synthfaces' identities.json."""
    m = json.loads(MANIFEST.read_text())
    code = m["identities"]["split_code"]
    return [{"id": u, "latent": {"seed": m["seed"], "split_code": code, "index": i}}
            for u, i in m["identities"]["users"].items()]


@lru_cache(maxsize=1)
def open_synthshift() -> FolderFaces:
    """The shipped shifted users, extracted once per archive version; attributes from attributes.csv."""
    if not ARCHIVE.exists():
        raise DataError(f"shifted identities missing at {ARCHIVE} (run `make synth-shifted` to regenerate)")
    try:
        root = extract_once(ARCHIVE, cache_dir())
    except OSError:
        # A read-only home: fall back to the system temp folder, still keyed by the archive's hash.
        root = extract_once(ARCHIVE, Path(tempfile.gettempdir()) / f"fl-sim-{os.getuid()}")
    ds = FolderFaces(str(root), kind="synthshift")
    ds.spec = "synthshift"
    return ds
