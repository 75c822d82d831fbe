"""`fl-sim config show`: the effective run configuration, every key documented."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from fl_sim.cli.common import CONFIG, print_json

app = typer.Typer(no_args_is_help=True, help="Inspect the run configuration.")


@app.command("show")
def config_show(config: Optional[Path] = CONFIG, set_: Optional[list[str]] = typer.Option(None, "--set"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the effective config with every key documented, then every registered part and its origin."""
    from fl_sim.core.config import load_config, to_dict, to_toml
    from fl_sim.core.parts import parts_lines

    cfg = load_config(config, set_ or [])
    if as_json:
        print_json(to_dict(cfg))
    else:
        sys.stdout.write(to_toml(cfg) + "\n\n" + "\n".join(parts_lines()) + "\n")
