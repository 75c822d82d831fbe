"""`fl-sim run`, `sweep` and `demo`: run federations and print their rounds, grid or attacks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from fl_sim.cli.common import CONFIG, RUNS_DIR, err, out, print_all, print_json

if TYPE_CHECKING:
    from fl_sim.experiments.runner import Launch
    from fl_sim.federation import RunResult


def run(config: Optional[Path] = CONFIG, set_: Optional[list[str]] = typer.Option(None, "--set", help="key=value override"),
        runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
        resume: Optional[str] = typer.Option(None, "--resume", help="RUN_ID: continue a killed run after its last "
                                                                    "finished round (its own config)")) -> None:
    """Run a simulated federation and record it in runs/<run-id>/."""
    from fl_sim.core.errors import FlSimError

    if resume is not None:
        if config is not None or set_:
            raise FlSimError("--resume: a resumed run keeps its own config (no --config or --set with it)")
        from fl_sim.experiments.runner import resume_with_progress

        _report(resume_with_progress(resume, runs_dir, err.print, console=err), as_json)
        return
    _run(config, set_ or [], runs_dir, as_json)


def sweep(config: Optional[Path] = CONFIG, set_: Optional[list[str]] = typer.Option(None, "--set", help="key=value for every run"),
          grid: Optional[list[str]] = typer.Option(None, "--grid", help="key=v1,v2,... (several --grid: their product)"),
          baseline: bool = typer.Option(False, "--baseline", help="also run the base config (defense off) as reference lines"),
          runs_dir: Path = RUNS_DIR, as_json: bool = typer.Option(False, "--json")) -> None:
    """Run a grid of federations; table and plot of leakage and utility against the swept parameter."""
    from fl_sim.experiments.bench_reports import sweep_report
    from fl_sim.experiments.sweep import parse_grid, run_sweep

    from fl_sim.experiments.progress import Bar

    with Bar(err, "sweep") as bar:
        doc = run_sweep(config, set_ or [], parse_grid(grid or []), runs_dir, progress=bar.say, baseline=baseline,
                        step=bar.step)
    if as_json:
        print_json(doc)
        return
    print_all(sweep_report(doc))
    if any(r["status"] != "finished" for r in doc["rows"]):
        raise typer.Exit(1)


def _run(config: Optional[Path], overrides: list[str], runs_dir: Path, as_json: bool,
         launch: Optional["Launch"] = None) -> Path:
    """Run (``launch``: how, see ``run_with_progress``), print the rounds (or JSON), exit 1 on a failed run;
    returns the run folder."""
    from fl_sim.experiments.runner import run_with_progress

    res = run_with_progress(config, overrides, runs_dir, err.print, console=err, launch=launch)
    _report(res, as_json)
    return res.run_dir


def _report(res: "RunResult", as_json: bool) -> None:
    """The run's rounds (or JSON); exit 1 on a failed run."""
    from fl_sim.experiments.reports import rounds_report

    if as_json:
        print_json({"run_id": res.run_id, "run_dir": str(res.run_dir), "status": res.status, "seconds": res.seconds,
                    "error": res.error})
    else:
        print_all(rounds_report(res.run_dir))
        out.print(f"run {res.run_id}: {res.status} in {res.seconds:.1f}s — store {res.run_dir / 'store.sqlite'}")
    if res.status != "finished":
        err.print(f"run failed: {res.error}")
        raise typer.Exit(1)


def demo(runs_dir: Path = RUNS_DIR) -> None:
    """Run the embedded default federation with the curious server on, and say where to look."""
    from fl_sim.experiments.reports import demo_report
    from fl_sim.experiments.runner import DEMO_OVERRIDES

    print_all(demo_report(_run(None, DEMO_OVERRIDES, runs_dir, as_json=False), runs_dir))


def register(app: typer.Typer) -> None:
    """Add run, sweep and demo to the fl-sim app."""
    app.command()(run)
    app.command()(sweep)
    app.command()(demo)
