"""The ServerApp: maps nodes to users, builds the strategy from the config, records the run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fl_sim.core import checkpoints
from fl_sim.core.adversary import ModelFacts, malicious
from fl_sim.core.config import RunConfig
from fl_sim.core.defenses import aggregate_only, server_wrappers, user_defenses
from fl_sim.core.errors import error_line, reason_line
from fl_sim.core.flwr_records import read_user, user_query
from fl_sim.core.models import build_model, task_heads
from fl_sim.core.records import ClientUpdate
from fl_sim.core.store import RunStore
from fl_sim.core.utility import HoldoutEvaluator
from server.adversary import Adversary, recovered_update
from server.curious import AttackDispatcher, CuriousStrategy
from server.strategy import OffsetRounds, RecordingStrategy, SeededFedAvg, update_norms
from server.worker import check_placement, connect_worker_ray, make_remote_worker

QUERY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Resume:
    """Where a resumed run goes on: after round ``after_round``, from that round's global model (None: round 0's,
    built from the seed as at the start)."""

    after_round: int
    model: dict[str, torch.Tensor] | None


def discover_users(grid: Grid, n_nodes: int) -> dict[int, str]:
    """Ask every node which user it is (node ids are random per run; partition ids are not)."""
    deadline = time.time() + QUERY_TIMEOUT_S
    while len(nodes := list(grid.get_node_ids())) < n_nodes:
        if time.time() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {n_nodes} nodes connected")
        time.sleep(0.2)
    msgs = [Message(content=user_query(), message_type="query", dst_node_id=n)
            for n in nodes]
    out = {}
    for reply in grid.send_and_receive(msgs, timeout=QUERY_TIMEOUT_S):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed the user query: {reason_line(reply.error.reason or '')}")
        out[reply.metadata.src_node_id] = read_user(reply.content)
    return out


def make_server_app(cfg: RunConfig, users: list[str], run_dir: Path,
                    progress: Callable[[int, dict[str, Any]], None] | None = None,
                    outcome: dict[str, Any] | None = None,
                    wrap: Callable[[Strategy], Strategy] | None = None, resume: Resume | None = None) -> ServerApp:
    """A ServerApp that runs ``cfg.rounds`` rounds and writes the run store in ``run_dir``.

    ``outcome`` receives ``final_arrays`` when the strategy finishes, so the caller can tell a
    completed run from one whose server loop raised inside Flower. ``resume``: go on after a killed run's last
    finished round, from its global model.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, cfg, users, run_dir, progress, outcome, wrap, context=context, resume=resume)

    return app


def serve(grid: Grid, cfg: RunConfig, users: list[str], run_dir: Path,
          progress: Callable[[int, dict[str, Any]], None] | None = None,
          outcome: dict[str, Any] | None = None, wrap: Callable[[Strategy], Strategy] | None = None, *,
          context: Context | None = None, resume: Resume | None = None) -> None:
    """The server's whole run: discover users, build the strategy, run the rounds, record them.

    ``wrap`` puts an outer strategy around the recording (or curious) one — e.g. one of Flower's
    DP wrappers, which then clips what the inner strategy sees and noises what it aggregates.
    """
    heads = task_heads(cfg.task, users)
    if hasattr(grid, "pull_interval"):
        # The in-memory grid polls for replies every 0.1 s by default, which alone costs most of a
        # small round; polling faster is cheap next to a round's training.
        grid.pull_interval = cfg.simulation.pull_interval_s
    store = RunStore(run_dir / "store.sqlite")
    dispatcher: AttackDispatcher | None = None
    attack_store: RunStore | None = None
    own_ray = False  # this process connected to (or started) Ray for the worker: it disconnects at the end
    try:
        user_of_node = discover_users(grid, len(users))
        for node, user in user_of_node.items():
            store.set_node(user, node)
        model = build_model(cfg.model.name, heads, cfg.data.image_size, cfg.model.width, cfg.seed, cfg.model.norm)

        defenses = user_defenses(cfg, users)

        def on_update(node: int, before: dict[str, np.ndarray], update: ClientUpdate) -> None:
            norm, per_layer = update_norms(before, {k: np.asarray(v) for k, v in update.arrays.items()})
            store.add_client_update(update, node_id=node, protocol=cfg.protocol, update_norm=norm,
                                    layer_norms=per_layer, defenses=defenses.get(update.user or ""))

        def on_round(rnd: int, rec: dict[str, Any]) -> None:
            ev = rec["evaluate"]
            store.add_round(rnd, rec["started"], rec["seconds"], rec["n_clients"], rec["train"].get("loss"),
                            ev.get("accuracy"), {"train": rec["train"], "evaluate": ev,
                                                 "per_user_accuracy": rec["per_user_accuracy"],
                                                 "failed": rec.get("failed", {}),
                                                 **({"adversary": rec["adversary"]} if "adversary" in rec else {})})
            if progress:
                progress(rnd, rec)

        if cfg.attack.enabled:
            own_ray = connect_worker_ray(cfg.attack.ray_address)
        dispatcher, attack_store = _start_attacks(cfg, heads, users, run_dir, defenses)
        if dispatcher is not None and resume is not None:
            dispatcher.requeue(resume.after_round)  # the attacks a kill left unfinished in the rounds that were done
        if (agg_only := aggregate_only(cfg)) is not None:
            final = _serve_secagg(grid, context, cfg, users, model, user_of_node, store, dispatcher, defenses,
                                  on_round, agg_only[0].name)
        else:
            final = _serve_messages(grid, cfg, users, model, user_of_node, dispatcher, on_update, on_round, wrap,
                                    defenses, run_dir, resume)
        if dispatcher is not None:
            if progress:
                # "watch": the caller may follow the drain (counts of jobs and attacks done) as it goes.
                progress(-1, {"draining": len(dispatcher.pending), "watch": dispatcher.watch})
            dispatcher.drain(cfg.attack.drain_timeout_s)
        torch.save(final, run_dir / "final_model.pt")
        if outcome is not None:
            outcome["final_arrays"] = final
    except BaseException as exc:  # recorded for the caller: Flower only logs server errors
        if outcome is not None:
            outcome["error"] = error_line(exc)  # the original exception's line, never a Ray wrapper
        raise
    finally:
        if dispatcher is not None:
            dispatcher.stop()
        if attack_store is not None:
            attack_store.close()
        store.close()
        if own_ray and ray.is_initialized():
            ray.shutdown()  # never leave a driver connection (or a private Ray) behind


def _start_attacks(cfg: RunConfig, heads: list[Any], users: list[str], run_dir: Path,
                   defenses: dict[str, dict[str, Any]]) -> tuple[AttackDispatcher | None, RunStore | None]:
    """The curious server's worker and dispatcher, when attacks are on."""
    if not cfg.attack.enabled:
        return None, None
    a = cfg.attack
    # Created after Flower's backend started Ray (or ``connect_worker_ray`` connected), so Flower's own Ray settings stand.
    check_placement(a.worker_gpus, a.worker_resource)
    worker = make_remote_worker(a.worker_cpus, a.worker_gpus, a.worker_resource)
    # Wait for its start-up (imports, prior, evaluators) here: it would otherwise compete
    # with the first rounds' training for the CPU.
    ray.get(worker.warm_up.remote(a.prior if "diffusion" in a.methods else None))
    # The dispatcher's own connection: its pump thread writes attacks while this thread
    # writes rounds and updates (WAL; sqlite serialises the two writers).
    attack_store = RunStore(run_dir / "store.sqlite", threads=True)
    dispatcher = AttackDispatcher(cfg, heads, users, run_dir, attack_store, worker, defenses)
    dispatcher.note_worker(ray.get(worker.where.remote()))  # where it runs (process, node, device), in the store
    dispatcher.start()
    return dispatcher, attack_store


def _adversary(cfg: RunConfig, users: list[str], model: torch.nn.Module) -> Adversary | None:
    """The malicious server's tactic for this run (None: an honest-but-curious server)."""
    if not malicious(cfg):
        return None
    return Adversary(cfg, users, ModelFacts(cfg.model.name, tuple(n for n, _ in model.named_parameters())))


def _serve_messages(grid: Grid, cfg: RunConfig, users: list[str], model: torch.nn.Module,
                    user_of_node: dict[int, str], dispatcher: AttackDispatcher | None, on_update: Any, on_round: Any,
                    wrap: Callable[[Strategy], Strategy] | None,
                    defenses: dict[str, dict[str, Any]], run_dir: Path,
                    resume: Resume | None = None) -> dict[str, torch.Tensor]:
    """Rounds on Flower's Message API strategy (FedAvg), optionally inside the defenses' wrappers (user-level DP).
    Each round's global model is kept (``checkpoints``) before the round's row is written."""
    harness = cfg.utility_eval == "harness"
    adversary = _adversary(cfg, users, model)
    inner = SeededFedAvg(node_of_user={u: n for n, u in user_of_node.items()}, sample=cfg.round_users,
                         craft=adversary.craft if adversary is not None else None,
                         variant=adversary.variant if adversary is not None else None, min_train_nodes=1,
                         min_evaluate_nodes=0 if harness else 1, min_available_nodes=len(users),
                         fraction_evaluate=0.0 if harness else 1.0)
    utility = HoldoutEvaluator(cfg, users) if harness else None
    hooks = {"user_of_node": user_of_node, "on_update": on_update, "on_round": on_round, "defenses": defenses,
             "adversary": adversary}
    if dispatcher is not None:
        strategy: RecordingStrategy = CuriousStrategy(inner, dispatcher=dispatcher, **hooks)
    else:
        strategy = RecordingStrategy(inner, **hooks)
    offset = resume.after_round if resume is not None else 0

    def evaluate_fn(rnd: int, arrays: ArrayRecord) -> None:
        # Flower calls this once before training (round 0) and after each round's phases.
        if rnd > 0:
            state = arrays.to_torch_state_dict()
            checkpoints.save(run_dir, rnd + offset, state)
            strategy.finish_round(rnd + offset, utility(state) if utility else None)

    outer = wrap(strategy) if wrap is not None else strategy
    for defense_wrap in server_wrappers(cfg):  # outermost: the curious server sees what Flower's server would
        outer = defense_wrap(outer)
    if offset:
        outer = OffsetRounds(outer, offset)
    initial = resume.model if resume is not None and resume.model is not None else model.state_dict()
    if offset >= cfg.rounds:  # killed during the final drain: every round is done, only attacks were left
        return dict(initial)
    result = outer.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=cfg.rounds - offset,
                         train_config=ConfigRecord({"lr": cfg.lr}), evaluate_fn=evaluate_fn)
    return result.arrays.to_torch_state_dict()


def _serve_secagg(grid: Grid, context: Context | None, cfg: RunConfig, users: list[str], model: torch.nn.Module,
                  user_of_node: dict[int, str], store: RunStore, dispatcher: AttackDispatcher | None,
                  defenses: dict[str, dict[str, Any]], on_round: Any, defense: str) -> dict[str, torch.Tensor]:
    """Rounds through SecAgg+ (``defense``): the store and the curious server get each round's aggregate only."""
    from server.secagg import AggregateOnlyFedAvg, run_secagg

    if context is None:
        raise RuntimeError("SecAgg+ needs the ServerApp's Flower context")
    shared = {defense: next(iter(defenses.values()), {}).get(defense, {})}
    adversary = _adversary(cfg, users, model)

    def on_aggregate(before: dict[str, np.ndarray], agg: ClientUpdate, checks: dict[str, Any]) -> None:
        norm, per_layer = update_norms(before, {k: np.asarray(v) for k, v in agg.arrays.items()})
        store.add_client_update(agg, node_id=0, protocol=cfg.protocol, update_norm=norm, layer_norms=per_layer,
                                defenses=shared, user_checks=checks)
        if dispatcher is not None and adversary is not None and adversary.sent_in(agg.round):
            for rec in adversary.recovered(agg.round):  # a crafted round: the target's update, from the aggregate
                dispatcher.observe_round(agg.round, rec.weights, [recovered_update(rec, None, agg.round, cfg)],
                                         notes=adversary.notes(rec))
        elif dispatcher is not None:
            dispatcher.observe_round(agg.round, before, [agg], aggregate_size=int(agg.aggregate_size or 1))

    state = {k: v.numpy() for k, v in model.state_dict().items()}
    strategy = AggregateOnlyFedAvg(cfg, list(state), state, user_of_node=user_of_node, on_aggregate=on_aggregate,
                                   on_round=on_round, utility=HoldoutEvaluator(cfg, users), adversary=adversary)
    run_secagg(grid, context, cfg, strategy)
    return {k: torch.from_numpy(v.copy()) for k, v in strategy.final.items()}
