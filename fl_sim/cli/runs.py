"""`fl-sim runs`, `export` and `inspect`: read recorded runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fl_sim.cli.common import RUNS_DIR, out, print_all, print_json, run_dir


def runs(runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the runs, newest first, with their status."""
    from fl_sim.core.store import list_runs
    from fl_sim.experiments.reports import runs_table
    from fl_sim.core.processes import reap_orphans

    reap_orphans(runs_dir)  # Ray processes of runs whose driver was SIGKILLed, identified by pid + start time
    rows = list_runs(runs_dir)
    if as_json:
        print_json(rows)
        return
    out.print(runs_table(rows, runs_dir))


def export(run: str, runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(True, "--json/--no-json")) -> None:
    """Everything about a run as JSON: run, config, users, rounds, updates, attacks."""
    from fl_sim.core.store import RunStore

    st = RunStore(run_dir(runs_dir, run) / "store.sqlite", readonly=True)
    try:
        print_json(st.export())
    finally:
        st.close()


def inspect(run: str, user: Optional[str] = typer.Option(None, "--user"), rnd: Optional[int] = typer.Option(None, "--round"),
            runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(False, "--json"),
            show_all: bool = typer.Option(False, "--all", help="every attack row in the run's table (default: the "
                                                                "first 200, by user and round)")) -> None:
    """Attacked rounds per user: similarity, re-identification rank, inferred vs true attributes."""
    from fl_sim.experiments.reports import TABLE_ROWS, inspect_report

    doc, shown = inspect_report(run_dir(runs_dir, run), user, rnd, limit=None if show_all else TABLE_ROWS)
    if as_json:
        print_json(doc)
        return
    print_all(shown)


def register(app: typer.Typer) -> None:
    """Add runs, export and inspect to the fl-sim app."""
    app.command()(runs)
    app.command()(export)
    app.command()(inspect)
