"""Benchmarks: Flower/Ray rounds vs a plain loop, and the attack benchmark (methods on the same users)."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_sim.config import RunConfig, load_config


def plain_federation(cfg: RunConfig) -> tuple[torch.nn.Module, list[float]]:
    """The same federation written as a plain loop (no Flower, no Ray): final model, seconds per round.

    Same users, same local training and evaluation, same aggregation (example-weighted mean), so
    its final model is the reference the Flower run must reproduce.
    """
    from clients.app import local_seed, user_batch
    from clients.training import local_train
    from fl_sim.federation import prepare_users
    from fl_sim.models import build_model, task_heads
    from fl_sim.utility import HoldoutEvaluator

    users = [u.user for u in prepare_users(cfg)]
    heads = task_heads(cfg.task, users)
    model = build_model(cfg.model.name, heads, cfg.data.image_size, cfg.model.width, cfg.seed)
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


def attacked_model(users: int, rnd: int, seed: int = 0) -> tuple[RunConfig, torch.nn.Module, list[str]]:
    """The default federation's global model after ``rnd`` FedAvg rounds (0: untrained), reproducibly.

    Trained with the plain loop, which the federation tests show equals the Flower run exactly.
    """
    from fl_sim.federation import prepare_users
    from fl_sim.models import build_model, task_heads

    cfg = load_config(None, [f"users={users}", f"rounds={max(rnd, 1)}", f"seed={seed}"])
    ids = [u.user for u in prepare_users(cfg)]
    if rnd == 0:
        return cfg, build_model(cfg.model.name, task_heads(cfg.task, ids), cfg.data.image_size, cfg.model.width, cfg.seed), ids
    model, _ = plain_federation(cfg)
    return cfg, model, ids


def bench_attack(*, users: int, batch_sizes: list[int], methods: list[str], rnd: int, protocol: str,
                 prior_spec: str = "faces32", iterations: int | None = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Each method on every user's update, same model, same seeds; scored by the face evaluators."""
    from dataclasses import replace

    from attacks.methods import AttackConfig, run_attack
    from attacks.priors import load_prior
    from clients.app import local_seed
    from clients.training import local_train
    from fl_sim.data import open_dataset
    from fl_sim.models import task_heads, user_labels
    from fl_sim.scoring import UserTruth, score
    from server.observe import build_observation

    cfg, model, ids = attacked_model(users, rnd)
    cfg = replace(cfg, protocol=protocol)
    heads = task_heads(cfg.task, ids)
    ds = open_dataset(cfg.data.dataset)
    all_photos = {u: ds.photos(u, cfg.data.image_size) for u in ids}
    attrs = {r.user: r.attributes for r in ds.users() if r.user in all_photos}
    prior = load_prior(prior_spec) if "diffusion" in methods else None
    acfg = AttackConfig() if iterations is None else AttackConfig(iterations=iterations)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows, context, refs = [], {}, {}
    images_out: dict[str, dict[int, torch.Tensor]] = {}
    for bs in batch_sizes:
        observations = []
        for u in ids:
            local = copy.deepcopy(model)
            x = all_photos[u][:bs]
            y = torch.tensor(user_labels(heads, u, attrs[u])).expand(len(x), -1)
            res = local_train(local, x, y, heads, protocol=protocol, lr=cfg.lr, epochs=cfg.local_epochs,
                              batch_size=cfg.local_batch_size, seed=local_seed(cfg.seed, rnd + 1, u))
            observations.append(build_observation(
                cfg, heads, global_state, local.state_dict(),
                {"num-examples": res.num_examples, "local-steps": res.local_steps, "lr": cfg.lr}, rnd=rnd + 1, user=u))
        truth = UserTruth(ids, {u: all_photos[u][:bs] for u in ids}, attrs)
        context[bs] = truth.context()
        refs[bs] = _references(truth, ids, cfg.data.image_size)
        for method in methods:
            if progress:
                progress(f"batch {bs}: {method} on {len(ids)} users")
            recs = run_attack(method, observations, prior, acfg)
            scores = score(torch.stack([r.image for r in recs]), list(ids), truth)
            images_out.setdefault(method, {})[bs] = torch.stack([r.image for r in recs])
            rows.append({
                "method": method, "round": rnd, "protocol": protocol, "batch_size": bs, "users": len(ids),
                "face_similarity": float(np.mean([s["face_similarity"] for s in scores])),
                "reid_top1": float(np.mean([s["reid_top1"] for s in scores])),
                "reid_top5": float(np.mean([s["reid_top5"] for s in scores])),
                "gender_acc": float(np.mean([s["gender_correct"] for s in scores])),
                "age_band_acc": float(np.mean([s["age_band_correct"] for s in scores])),
                "label_acc": float(np.mean([r.labels.get("gender") == heads[0].classes.index(attrs[u]["gender"])
                                            for r, u in zip(recs, ids)])) if cfg.task == "attributes" else None,
                "psnr": float(np.mean([s["psnr_mean_photo"] for s in scores])),
                "ssim": float(np.mean([s["ssim_mean_photo"] for s in scores])),
                "seconds_per_user": float(np.mean([r.seconds for r in recs])),
                "iterations": acfg.iterations,
            })
    return {"rows": rows, "context": context, "references": refs, "images": images_out, "users": ids,
            "photos": {u: all_photos[u][:4] for u in ids},
            "attack_config": {k: getattr(acfg, k) for k in acfg.__dataclass_fields__}}


def _references(truth: Any, ids: list[str], size: int) -> dict[str, float]:
    """Average face (mean of the prior split: no identity) and each user's own mean photo (upper reference)."""
    from fl_sim.data.base import to_tensor
    from fl_sim.data.synthfaces import open_synthfaces
    from fl_sim.scoring import score

    photos, _ = open_synthfaces("prior").all_photos_uint8()
    avg = to_tensor(photos[:4000], size).mean(0, keepdim=True)
    avg_scores = score(avg.expand(len(ids), -1, -1, -1), list(ids), truth)
    own = score(torch.stack([truth.photos[u].mean(0) for u in ids]), list(ids), truth)
    return {"average_face_similarity": float(np.mean([s["face_similarity"] for s in avg_scores])),
            "average_face_reid_top1": float(np.mean([s["reid_top1"] for s in avg_scores])),
            "mean_photo_similarity": float(np.mean([s["face_similarity"] for s in own])),
            "mean_photo_reid_top1": float(np.mean([s["reid_top1"] for s in own]))}


def attack_figure(res: dict[str, Any], path: Path, max_users: int = 8) -> Path:
    """Per user: 4 true photos | each method's reconstruction (first batch size)."""
    from fl_sim.prior_train import save_grid

    methods = list(res["images"])
    bs = sorted(next(iter(res["images"].values())))[0]
    tiles = []
    for i, u in enumerate(res["users"][:max_users]):
        tiles.extend(list(res["photos"][u][:4]))
        tiles.extend(res["images"][m][bs][i] for m in methods)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(torch.stack(tiles), path, nrow=4 + len(methods), scale=3)
    return path
