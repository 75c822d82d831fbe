"""Where the embedded assets live (``fl_sim/assets``: identities, shifted users, the faces32 prior), and the user's
cache of what is derived from them (extracted archives, face embeddings)."""

from __future__ import annotations

import os
from pathlib import Path

ASSET_ROOT = Path(__file__).resolve().parents[1] / "assets"


def cache_dir() -> Path:
    """Where derived files live: $FL_SIM_CACHE, else $XDG_CACHE_HOME/fl-sim, else ~/.cache/fl-sim."""
    if os.environ.get("FL_SIM_CACHE"):
        return Path(os.environ["FL_SIM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fl-sim"
