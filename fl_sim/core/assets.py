"""Where the embedded assets live: ``fl_sim/assets`` (identities, shifted users, the faces32 prior)."""

from __future__ import annotations

from pathlib import Path

ASSET_ROOT = Path(__file__).resolve().parents[1] / "assets"
