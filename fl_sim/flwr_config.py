"""Run config for `flwr run .`: Flower's run-config keys -> the fl-sim RunConfig."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from fl_sim.config import RunConfig, load_config


def config_from_flwr(run_config: dict[str, Any]) -> RunConfig:
    """``config-file`` (a TOML path, optional) and ``overrides`` ("key=value key=value")."""
    path = str(run_config.get("config-file", "") or "")
    overrides = shlex.split(str(run_config.get("overrides", "") or ""))
    if "num-server-rounds" in run_config and not any(o.startswith("rounds=") for o in overrides):
        overrides.append(f"rounds={int(run_config['num-server-rounds'])}")
    return load_config(Path(path) if path else None, overrides)
