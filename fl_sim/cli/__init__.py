"""The `fl-sim` command line: one thin module per subcommand; each parses, calls one function, prints."""

from __future__ import annotations

import sys

import typer

from fl_sim.cli import audit, bench, config, data, deploy, prior, run, runs, serve
from fl_sim.cli.common import err
from fl_sim.core.errors import FlSimError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fl-sim: how much a curious federated-learning server learns about each user.")
app.add_typer(prior.app, name="prior")
app.add_typer(config.app, name="config")
app.add_typer(data.app, name="data")
app.add_typer(bench.app, name="bench")
app.add_typer(deploy.app, name="deploy")
audit.register(app)  # fl-sim audit: visual privacy audit of DP-SGD (fl_sim/experiments/audit)
run.register(app)    # run, sweep, demo
runs.register(app)   # runs, export, inspect
serve.register(app)  # serve: the web view (fl_sim/web)


def main() -> None:
    """Entry point: user errors are one line on stderr and exit code 2, never a traceback."""
    try:
        app(standalone_mode=True)
    except FlSimError as exc:
        err.print(f"fl-sim: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
