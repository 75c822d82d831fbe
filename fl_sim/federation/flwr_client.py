"""`flwr run .` ClientApp: builds the fl-sim client for the run's config on first use."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.app import make_client_app
from fl_sim.core.flwr_config import config_from_flwr

client_app = ClientApp()


@lru_cache(maxsize=4)
def _app(key: tuple[tuple[str, str], ...], n_nodes: int) -> ClientApp:
    from fl_sim.federation import prepare_users, stored_run

    run_config = dict(key)
    if run_config.get("run-dir"):  # `fl-sim deploy`: the run's config snapshot and users, as the ServerApp reads them
        cfg, users = stored_run(Path(run_config["run-dir"]))
        return make_client_app(cfg, users, Path(run_config["run-dir"]))
    cfg = config_from_flwr(run_config, n_nodes)
    return make_client_app(cfg, [u.user for u in prepare_users(cfg)])


def _dispatch(msg: Message, context: Context) -> Message:
    key = tuple(sorted((k, str(v)) for k, v in context.run_config.items()))
    return _app(key, int(context.node_config["num-partitions"]))(msg, context)


client_app.train()(_dispatch)
client_app.evaluate()(_dispatch)
client_app.query()(_dispatch)
