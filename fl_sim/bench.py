"""Benchmarks: Flower/Ray federation rounds vs the same training in a plain in-process loop."""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from fl_sim.config import RunConfig, load_config


def plain_federation(cfg: RunConfig) -> tuple[torch.nn.Module, list[float]]:
    """The same federation written as a plain loop (no Flower, no Ray): final model, seconds per round.

    Same users, same local training and evaluation, same aggregation (example-weighted mean), so
    its final model is the reference the Flower run must reproduce.
    """
    from clients.app import local_seed, user_batch
    from clients.training import evaluate, local_train
    from fl_sim.federation import prepare_users
    from fl_sim.models import build_model, task_heads

    users = [u.user for u in prepare_users(cfg)]
    heads = task_heads(cfg.task, users)
    model = build_model(cfg.model.name, heads, cfg.data.image_size, cfg.model.width, cfg.seed)
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
        for u in users:
            data, _, yh = user_batch(cfg, u, heads)
            evaluate(model, data.holdout, yh, heads)
        times.append(time.time() - t0)
    return model, times


def bench_federation(overrides: list[str], *, rounds: int, runs_dir: Path) -> dict[str, Any]:
    """Mean round time after the first (actor start-up) round, Flower vs plain, in one process."""
    from fl_sim.federation import run_federation
    from fl_sim.store import RunStore

    cfg = load_config(None, [f"rounds={rounds}", *overrides])
    t0 = time.time()
    res = run_federation(cfg, runs_dir)
    flower_total = time.time() - t0
    if res.status != "finished":
        raise RuntimeError(f"bench federation run failed: {res.error}")
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    flower = [r["seconds"] for r in st.rounds()]
    st.close()
    _, plain = plain_federation(cfg)
    steady = lambda xs: statistics.mean(xs[1:]) if len(xs) > 1 else xs[0]  # noqa: E731
    return {
        "config": {"users": cfg.users, "rounds": cfg.rounds, "protocol": cfg.protocol, "model": cfg.model.name,
                   "photos_per_user": cfg.data.photos_per_user, "image_size": cfg.data.image_size},
        "flower_round_s": steady(flower), "plain_round_s": steady(plain), "ratio": steady(flower) / steady(plain),
        "flower_first_round_s": flower[0], "plain_first_round_s": plain[0],
        "flower_total_s": flower_total, "flower_rounds_s": flower, "plain_rounds_s": plain,
        "torch_threads_plain": torch.get_num_threads(), "run_id": res.run_id,
    }
