"""`flwr run .` ServerApp: the same server, configured from Flower's run config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_sim.core.config import RunConfig
from fl_sim.core.errors import error_line
from fl_sim.core.flwr_config import config_from_flwr
from fl_sim.core.store import FAILED, FINISHED, RunStore
from fl_sim.federation import init_run, stored_run
from server.app import serve

server_app = ServerApp()


def _run_folder(grid: Grid, run_config: dict[str, Any]) -> tuple[RunConfig, list[str], Path]:
    """The run's config, users and folder. ``run-dir`` set (by ``fl-sim deploy``): that folder's store and config
    snapshot are already written, and the snapshot says how many users (nodes) to wait for. Else (plain
    `flwr run .`): the config from ``config-file``/``overrides``, one user per connected node, a new folder."""
    run_dir = str(run_config.get("run-dir", "") or "")
    if run_dir:
        cfg, users = stored_run(Path(run_dir))
        return cfg, users, Path(run_dir)
    cfg = config_from_flwr(run_config, len(list(grid.get_node_ids())))
    users, _, folder = init_run(cfg, Path(str(run_config.get("runs-dir", "runs"))).resolve())
    return cfg, users, folder


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = dict(context.run_config)
    given = str(run_config.get("run-dir", "") or "")
    run_dir: Path | None = Path(given) if given else None
    outcome: dict[str, Any] = {}
    try:
        cfg, users, run_dir = _run_folder(grid, run_config)
        serve(grid, cfg, users, run_dir, outcome=outcome, context=context)
    except BaseException as exc:
        outcome.setdefault("error", error_line(exc))  # e.g. a snapshot that no longer loads: the run says why
        raise
    finally:
        if run_dir is not None and (run_dir / "store.sqlite").exists():
            st = RunStore(run_dir / "store.sqlite")
            st.finish_run(FINISHED if "final_arrays" in outcome else FAILED, error=outcome.get("error"))
            st.close()
