"""What every fl-sim subcommand shares: the consoles, common options, JSON printing, run-folder lookup."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, ConsoleDimensions, RenderableType

from fl_sim.core.errors import FlSimError

# Plain output (a pipe, a log, a test) is this wide: tables read badly wrapped at 80 columns in logs.
PLAIN_WIDTH = 120


class TermConsole(Console):
    """A console as wide as the terminal it writes to, or as COLUMNS says when set; elsewhere (a pipe,
    a file, a test) PLAIN_WIDTH columns and plain text: no colours, no cursor moves, no bars.
    Whether the output is a terminal is asked at each print (tests swap sys.stdout), not at import."""

    def __init__(self, *args: Any, plain_width: int = PLAIN_WIDTH, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plain_width = plain_width

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        if self._width is None and not self.is_terminal:  # COLUMNS (read by rich at construction) sets _width
            return ConsoleDimensions(self.plain_width, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


out = TermConsole()
err = TermConsole(stderr=True)

RUNS_DIR = typer.Option(Path("runs"), "--runs-dir", help="folder holding run folders")
CONFIG = typer.Option(None, "--config", help="TOML run config")
PRIOR = typer.Option("faces32", "--prior", help="faces32 | faces64 (embedded) | a diffusers folder | a hub id")
PRIOR_AUTO = typer.Option("auto", "--prior", help="auto (the embedded prior at --size) | faces32 | faces64 | a diffusers "
                                                  "folder | a hub id")


def print_json(obj: Any) -> None:
    """Indented JSON on stdout; NaN and infinities become null (strict JSON readers reject them)."""
    from fl_sim.core.fmt import json_safe

    sys.stdout.write(json.dumps(json_safe(obj), indent=2) + "\n")


def print_all(items: Iterable[RenderableType], console: Console = out) -> None:
    """Each table or line, in order, as it comes."""
    for item in items:
        console.print(item)


def run_dir(runs_dir: Path, run: str) -> Path:
    """A run's folder: ``run`` itself when it is one, else ``runs_dir/run``; a one-line error when absent."""
    d = Path(run) if Path(run).is_dir() and (Path(run) / "store.sqlite").exists() else runs_dir / run
    if not (d / "store.sqlite").exists():
        raise FlSimError(f"no run {run!r} in {runs_dir}: {d / 'store.sqlite'} does not exist (fl-sim runs lists them)")
    return d


def int_list(option: str, text: str, minimum: int) -> list[int]:
    """'8,32,64' -> [8, 32, 64], each >= minimum; a one-line error naming the option otherwise."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FlSimError(f"{option}: expected integers like 8,32,64, got {text!r}") from None
    if not values or any(v < minimum for v in values):
        raise FlSimError(f"{option}: expected integers >= {minimum}, got {text!r}")
    return values
