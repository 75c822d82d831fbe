"""Rounds through Flower's SecAgg+ workflow: the (curious) server sees only each round's unmasked aggregate."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg as LegacyFedAvg

from fl_sim.core.config import RunConfig
from fl_sim.core.defenses import aggregate_only
from fl_sim.core.flwr_records import read_fitres
from fl_sim.core.records import ClientUpdate
from server.adversary import Adversary


class AggregateOnlyFedAvg(LegacyFedAvg):
    """Flower's legacy FedAvg for SecAgg+, with fl-sim's seeded sampling and recording.

    After SecAgg+ unmasks the round, every result it hands ``aggregate_fit`` carries the same
    aggregate: no single user's update reaches this strategy, so it records (and the curious
    server attacks) the aggregate of N users.
    """

    def __init__(self, cfg: RunConfig, keys: list[str], initial: dict[str, np.ndarray], *,
                 user_of_node: dict[int, str],
                 on_aggregate: Callable[[dict[str, np.ndarray], ClientUpdate, dict[str, Any]], None],
                 on_round: Callable[[int, dict[str, Any]], None],
                 utility: Callable[[dict[str, torch.Tensor]], dict[str, Any]],
                 adversary: Adversary | None = None) -> None:
        """``adversary``: a malicious server's (crafted FitIns per client; recovery from the unmasked aggregate)."""
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=1, min_evaluate_clients=0,
                         min_available_clients=len(user_of_node),
                         initial_parameters=ndarrays_to_parameters([initial[k] for k in keys]))
        self.cfg, self.keys = cfg, keys
        self.user_of_node = user_of_node
        self.on_aggregate, self.on_round_hook, self.utility = on_aggregate, on_round, utility
        self.adversary = adversary
        self.final: dict[str, np.ndarray] = dict(initial)
        self._global: dict[str, np.ndarray] = dict(initial)
        self._started = 0.0
        self._train: dict[str, Any] = {}
        self._n = 0

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[tuple[Any, FitIns]]:
        self._started = time.time()
        self._global = dict(zip(self.keys, parameters_to_ndarrays(parameters), strict=True))
        proxies = {int(p.node_id): p for p in client_manager.all().values()}
        wanted = set(self.cfg.round_users(list(self.user_of_node.values()), server_round))
        chosen = [p for nid, p in sorted(proxies.items()) if self.user_of_node.get(nid) in wanted]
        config = {"server-round": server_round, "lr": self.cfg.lr}
        ins = FitIns(parameters, config)
        users = [self.user_of_node[int(p.node_id)] for p in chosen]
        crafted = self.adversary.craft(server_round, self._global, users) if self.adversary is not None else None
        if not crafted:
            return [(p, ins) for p in chosen]
        # A crafted round: each client its own parameters (SecAgg+ masks what comes back, not what goes out).
        own = {id(st): FitIns(ndarrays_to_parameters([st[k] for k in self.keys]), config) for st in crafted.values()}
        return [(p, own[id(crafted[u])]) for p, u in zip(chosen, users)]

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Parameters | None,
                                                                                              dict[str, Any]]:
        if failures:
            raise RuntimeError(f"{len(failures)} client(s) failed in SecAgg+ round {server_round}: {failures[0]}")
        params, _ = super().aggregate_fit(server_round, results, failures)
        if params is None:
            raise RuntimeError(f"SecAgg+ round {server_round} produced no aggregate")
        agg = dict(zip(self.keys, parameters_to_ndarrays(params), strict=True))
        if self.adversary is not None and self.adversary.sent_in(server_round):
            # The unmasked aggregate and what was sent: all the tactic gets. The FedAvg weights are the examples
            # each client declared (SecAgg+ weighs by them).
            examples = {self.user_of_node[int(p.node_id)]: int(r.num_examples) for p, r in results}
            nxt = self.adversary.close_round(server_round, self._global, examples, agg)
            params = ndarrays_to_parameters([np.asarray(nxt[k]) for k in self.keys])
        # Only what an aggregate tells: the count of users and examples, and the shared local schedule.
        fit = [read_fitres(r, round=server_round) for _, r in results]
        # What each client's checks of the model it received said (in the clear beside the masked weights: a
        # client's own finding about the server, not about its data).
        checks = {self.user_of_node[int(p.node_id)]: dict(r.checks) for (p, _), r in zip(results, fit) if r.checks}
        update = ClientUpdate(user=None, round=server_round, arrays=agg, aggregate_size=len(fit),
                              num_examples=int(sum(r.num_examples for r in fit)), local_steps=fit[0].local_steps,
                              lr=self.cfg.lr, loss=float(np.average([r.loss for r in fit],
                                                                    weights=[r.num_examples for r in fit])))
        self._train, self._n = {"loss": update.loss}, len(fit)
        self.on_aggregate(self._global, update, checks)
        self.final = agg
        return params, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Any]] | None:
        if server_round == 0:
            return None
        state = {k: torch.from_numpy(a.copy()) for k, a in zip(self.keys, parameters_to_ndarrays(parameters),
                                                                strict=True)}
        ev = self.utility(state)
        rec = {"started": self._started, "seconds": time.time() - self._started, "n_clients": self._n,
               "train": self._train, "evaluate": ev["metrics"], "per_user_accuracy": ev["per_user_accuracy"]}
        if self.adversary is not None and (note := self.adversary.note(server_round)) is not None:
            rec["adversary"] = note
        self.on_round_hook(server_round, rec)
        return float(ev["metrics"].get("loss", 0.0)), {}


def run_secagg(grid: Any, context: Context, cfg: RunConfig, strategy: AggregateOnlyFedAvg) -> None:
    """Run ``cfg.rounds`` rounds of Flower's DefaultWorkflow with the defense's (SecAgg+'s) fit workflow."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow

    agg_only = aggregate_only(cfg)
    if agg_only is None:
        raise RuntimeError("no aggregate-only defense is on")
    defense, section = agg_only
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.rounds), strategy=strategy)
    DefaultWorkflow(fit_workflow=defense.fit_workflow(section, cfg))(grid, legacy)
