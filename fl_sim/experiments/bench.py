"""Benchmarks: Flower/Ray rounds vs a plain loop, attacks on vs off (the attack benchmark: fl_sim/attack_bench.py)."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_sim.core.config import RunConfig, load_config


def plain_federation(cfg: RunConfig, on_round: Callable[[int], None] | None = None
                     ) -> tuple[torch.nn.Module, list[float]]:
    """The same federation written as a plain loop (no Flower, no Ray): final model, seconds per round.

    Same users, same local training and evaluation, same aggregation (example-weighted mean), so
    its final model is the reference the Flower run must reproduce.
    """
    from fl_sim.core.userbatch import local_seed, user_batch
    from clients.training import local_train
    from fl_sim.federation import prepare_users
    from fl_sim.core.models import build_model, task_heads
    from fl_sim.core.utility import HoldoutEvaluator

    users = [u.user for u in prepare_users(cfg)]
    heads = task_heads(cfg.task, users)
    model = build_model(cfg.model.name, heads, cfg.data.image_size, cfg.model.width, cfg.seed, cfg.model.norm)
    utility = HoldoutEvaluator(cfg, users)
    times = []
    for rnd in range(1, cfg.rounds + 1):
        t0 = time.time()
        sampled = cfg.round_users(users, rnd)
        global_state = copy.deepcopy(model.state_dict())
        acc: dict[str, torch.Tensor] = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()}
        total = 0
        for u in sampled:
            local = copy.deepcopy(model)
            local.load_state_dict(global_state)
            data, y, _ = user_batch(cfg, u, heads)
            res = local_train(local, data.train, y, heads, protocol=cfg.protocol, lr=cfg.lr, epochs=cfg.local_epochs,
                              batch_size=cfg.local_batch_size, seed=local_seed(cfg.seed, rnd, u))
            for k, v in local.state_dict().items():
                acc[k] += v.double() * res.num_examples
            total += res.num_examples
        model.load_state_dict({k: (v / total).to(global_state[k].dtype) for k, v in acc.items()})
        utility(model.state_dict())
        times.append(time.time() - t0)
        if on_round:
            on_round(rnd)
    return model, times


def _flower_rounds(cfg: RunConfig, runs_dir: Path, on_round: Callable[[int], None] | None = None
                   ) -> tuple[list[float], float, Any]:
    """One Flower run: seconds per round (from the store), total seconds, the result."""
    from fl_sim.federation import run_federation
    from fl_sim.core.store import RunStore

    t0 = time.time()
    res = run_federation(cfg, runs_dir, (lambda rnd, _rec: on_round(rnd) if rnd > 0 else None) if on_round else None)
    total = time.time() - t0
    if res.status != "finished":
        raise RuntimeError(f"bench federation run failed: {res.error}")
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    rounds = [r["seconds"] for r in st.rounds()]
    attacks = st.attacks()
    st.close()
    return rounds, total, (res, attacks)


def _steady(xs: list[float]) -> float:
    """Mean round time after the first round (which starts the actors)."""
    return statistics.mean(xs[1:]) if len(xs) > 1 else xs[0]


def _rounds_step(step: Callable[[int, int], None] | None, total: int) -> Callable[[int], Callable[[int], None] | None]:
    """``step(done, total)`` over several runs of rounds: the on_round callback of the run starting at ``offset``."""
    if step:
        step(0, total)
    return lambda offset: (lambda rnd: step(offset + rnd, total)) if step else None


def bench_federation(overrides: list[str], *, rounds: int, runs_dir: Path,
                     step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Mean round time after the first (actor start-up) round, Flower vs plain, in one process.
    ``step(done, total)``: rounds run so far, Flower's then the plain loop's."""
    cfg = load_config(None, [f"rounds={rounds}", "attack.enabled=false", *overrides])
    at = _rounds_step(step, 2 * cfg.rounds)
    flower, flower_total, (res, _) = _flower_rounds(cfg, runs_dir, at(0))
    _, plain = plain_federation(cfg, at(cfg.rounds))
    return {
        "config": {"users": cfg.users, "rounds": cfg.rounds, "protocol": cfg.protocol, "model": cfg.model.name,
                   "photos_per_user": cfg.data.photos_per_user, "image_size": cfg.data.image_size},
        "flower_round_s": _steady(flower), "plain_round_s": _steady(plain), "ratio": _steady(flower) / _steady(plain),
        "flower_first_round_s": flower[0], "plain_first_round_s": plain[0],
        "flower_total_s": flower_total, "flower_rounds_s": flower, "plain_rounds_s": plain,
        "torch_threads_plain": torch.get_num_threads(), "run_id": res.run_id,
    }


def bench_federation_attacks(overrides: list[str], *, rounds: int, runs_dir: Path,
                             step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Round wall time with the curious server attacking every user in every round vs attacks off.

    Both runs in this process, same seed and config otherwise. Round times exclude the final
    drain (the federation only waits for attacks at the end); the drain is reported beside them.
    The queue holds every round's job (``queue_size`` = rounds): this measures the overlap, not
    the back-pressure of a full queue (with ``when_full=wait`` a full queue holds the round).
    ``step(done, total)``: rounds run so far, attacks off then on.
    """
    base = [f"rounds={rounds}", *overrides]
    off_cfg = load_config(None, [*base, "attack.enabled=false"])
    on_cfg = load_config(None, [*base, "attack.enabled=true", "attack.every=1", "attack.rounds=",
                                f"attack.queue_size={rounds}"])
    at = _rounds_step(step, off_cfg.rounds + on_cfg.rounds)
    off, off_total, (off_res, _) = _flower_rounds(off_cfg, runs_dir, at(0))
    on, on_total, (on_res, attacks) = _flower_rounds(on_cfg, runs_dir, at(off_cfg.rounds))
    statuses: dict[str, int] = {}
    for a in attacks:
        statuses[a["status"]] = statuses.get(a["status"], 0) + 1
    return {
        "config": {"users": on_cfg.users, "rounds": on_cfg.rounds, "protocol": on_cfg.protocol,
                   "methods": list(on_cfg.attack.methods), "iterations": on_cfg.attack.iterations,
                   "attacked_rounds": on_cfg.rounds, "queue_size": on_cfg.attack.queue_size, "worker_cpus": on_cfg.attack.worker_cpus,
                   "worker_gpus": on_cfg.attack.worker_gpus},
        "attacks_off_round_s": _steady(off), "attacks_on_round_s": _steady(on),
        "attack_overhead_ratio": _steady(on) / _steady(off),
        "attacks_off_rounds_s": off, "attacks_on_rounds_s": on,
        "attacks_off_total_s": off_total, "attacks_on_total_s": on_total,
        "attacks_on_federation_s": sum(on), "attacks_drain_s": on_total - off_total,
        "attack_statuses": statuses, "run_ids": {"off": off_res.run_id, "on": on_res.run_id},
    }


def write_doc_section(doc: Path, key: str, text: str) -> None:
    """Replace the text between ``<!-- key:begin -->`` and ``<!-- key:end -->`` (append the block if absent)."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    old = doc.read_text() if doc.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    tmp = doc.with_suffix(doc.suffix + ".tmp")
    tmp.write_text(new)
    tmp.replace(doc)


def bench_deploy(overrides: list[str], *, rounds: int, runs_dir: Path,
                 step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Round wall time of Flower's Deployment Engine on the loopback (`fl-sim deploy local`: a SuperLink, a
    SuperNode per user, a ClientApp process per message) vs the Simulation Engine, same config, one after the
    other in this process; attacks off (the worker's cost is measured by ``bench federation --attacks``)."""
    from fl_sim.core.store import RunStore
    from fl_sim.federation.deploy import deploy

    cfg = load_config(None, [f"rounds={rounds}", "attack.enabled=false", *overrides])
    at = _rounds_step(step, 2 * cfg.rounds)
    sim, sim_total, (sim_res, _) = _flower_rounds(cfg, runs_dir, at(0))
    dep_cfg = load_config(None, [f"rounds={rounds}", "attack.enabled=false", *overrides])
    on_round = at(cfg.rounds)
    t0 = time.time()
    res = deploy(dep_cfg, runs_dir, (lambda rnd, _rec: on_round(rnd) if on_round and rnd > 0 else None),
                 mode="local", say=lambda _s: None)
    dep_total = time.time() - t0
    if res.status != "finished":
        raise RuntimeError(f"bench deploy run failed: {res.error}")
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    dep = [r["seconds"] for r in st.rounds()]
    st.close()
    return {
        "config": {"users": cfg.users, "rounds": cfg.rounds, "protocol": cfg.protocol, "model": cfg.model.name,
                   "photos_per_user": cfg.data.photos_per_user, "image_size": cfg.data.image_size},
        "deploy_round_s": _steady(dep), "simulation_round_s": _steady(sim), "ratio": _steady(dep) / _steady(sim),
        "deploy_first_round_s": dep[0], "simulation_first_round_s": sim[0],
        "deploy_total_s": dep_total, "simulation_total_s": sim_total,
        "deploy_rounds_s": dep, "simulation_rounds_s": sim, "run_ids": {"simulation": sim_res.run_id, "deploy": res.run_id},
    }
