"""`flwr run .` ServerApp: the same server, configured from Flower's run config."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_sim.federation import init_run
from fl_sim.core.flwr_config import config_from_flwr
from fl_sim.core.store import FAILED, FINISHED, RunStore
from server.app import serve

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_flwr(dict(context.run_config), len(list(grid.get_node_ids())))
    users, _, run_dir = init_run(cfg, Path(str(context.run_config.get("runs-dir", "runs"))).resolve())
    outcome: dict = {}
    try:
        serve(grid, cfg, users, run_dir, outcome=outcome, context=context)
    finally:
        st = RunStore(run_dir / "store.sqlite")
        st.finish_run(FINISHED if "final_arrays" in outcome else FAILED, error=outcome.get("error"))
        st.close()
