"""Run config for `flwr run .`: Flower's run-config keys -> the fl-sim RunConfig."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from fl_sim.core.config import RunConfig, load_config
from fl_sim.core.errors import ConfigError


def config_from_flwr(run_config: dict[str, Any], n_nodes: int) -> RunConfig:
    """``config-file`` (a TOML path, optional) and ``overrides`` ("key=value key=value").

    Under `flwr run` the federation decides how many nodes there are; each node is one user,
    so ``users`` follows the node count (and must agree with it if set explicitly).
    """
    path = str(run_config.get("config-file", "") or "")
    overrides = shlex.split(str(run_config.get("overrides", "") or ""))
    explicit = [o for o in overrides if o.startswith("users=")]
    if explicit and explicit[-1] != f"users={n_nodes}":
        raise ConfigError(f"config key 'users': {explicit[-1][6:]} set, but the federation has {n_nodes} nodes")
    overrides.append(f"users={n_nodes}")
    if "num-server-rounds" in run_config and not any(o.startswith("rounds=") for o in overrides):
        overrides.append(f"rounds={int(run_config['num-server-rounds'])}")
    return load_config(Path(path) if path else None, overrides)
