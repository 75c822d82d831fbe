"""`fl-sim deploy local|sim`: the same run through Flower's `flwr run`, on processes started and stopped here."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

import typer

from fl_sim.cli.common import CONFIG, RUNS_DIR, err

app = typer.Typer(no_args_is_help=True, help="Run on Flower's Deployment Engine (local) or behind `flwr run` (sim).")

USERS = typer.Option(None, "--users", help="users, one SuperNode each (default: the config's)", min=1)
SET = typer.Option(None, "--set", help="key=value override")


def _deploy(mode: str, users: Optional[int], config: Optional[Path], set_: Optional[list[str]], runs_dir: Path,
            as_json: bool) -> None:
    from fl_sim.cli.run import _run
    from fl_sim.federation.deploy import deploy

    overrides = list(set_ or []) + ([f"users={users}"] if users is not None else [])
    _run(config, overrides, runs_dir, as_json, launch=partial(deploy, mode=mode, say=err.print))


@app.command()
def local(users: Optional[int] = USERS, config: Optional[Path] = CONFIG, set_: Optional[list[str]] = SET,
          runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Flower's Deployment Engine on 127.0.0.1: a SuperLink, a SuperNode per user, a Ray head for the attack
    worker; the run through `flwr run`; every process stopped at the end."""
    _deploy("local", users, config, set_, runs_dir, as_json)


@app.command()
def sim(users: Optional[int] = USERS, config: Optional[Path] = CONFIG, set_: Optional[list[str]] = SET,
        runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """`flwr run` on a simulation SuperLink started (and stopped) here; exits with the run's status."""
    _deploy("sim", users, config, set_, runs_dir, as_json)
