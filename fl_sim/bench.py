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
    return model, times


def _flower_rounds(cfg: RunConfig, runs_dir: Path) -> tuple[list[float], float, Any]:
    """One Flower run: seconds per round (from the store), total seconds, the result."""
    from fl_sim.federation import run_federation
    from fl_sim.store import RunStore

    t0 = time.time()
    res = run_federation(cfg, runs_dir)
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


def bench_federation(overrides: list[str], *, rounds: int, runs_dir: Path) -> dict[str, Any]:
    """Mean round time after the first (actor start-up) round, Flower vs plain, in one process."""
    cfg = load_config(None, [f"rounds={rounds}", "attack.enabled=false", *overrides])
    flower, flower_total, (res, _) = _flower_rounds(cfg, runs_dir)
    _, plain = plain_federation(cfg)
    return {
        "config": {"users": cfg.users, "rounds": cfg.rounds, "protocol": cfg.protocol, "model": cfg.model.name,
                   "photos_per_user": cfg.data.photos_per_user, "image_size": cfg.data.image_size},
        "flower_round_s": _steady(flower), "plain_round_s": _steady(plain), "ratio": _steady(flower) / _steady(plain),
        "flower_first_round_s": flower[0], "plain_first_round_s": plain[0],
        "flower_total_s": flower_total, "flower_rounds_s": flower, "plain_rounds_s": plain,
        "torch_threads_plain": torch.get_num_threads(), "run_id": res.run_id,
    }


def bench_federation_attacks(overrides: list[str], *, rounds: int, runs_dir: Path) -> dict[str, Any]:
    """Round wall time with the curious server attacking every user in every round vs attacks off.

    Both runs in this process, same seed and config otherwise. Round times exclude the final
    drain (the federation only waits for attacks at the end); the drain is reported beside them.
    The queue holds every round's job (``queue_size`` = rounds): this measures the overlap, not
    the back-pressure of a full queue (with ``when_full=wait`` a full queue holds the round).
    """
    base = [f"rounds={rounds}", *overrides]
    off_cfg = load_config(None, [*base, "attack.enabled=false"])
    on_cfg = load_config(None, [*base, "attack.enabled=true", "attack.every=1", "attack.rounds=",
                                f"attack.queue_size={rounds}"])
    off, off_total, (off_res, _) = _flower_rounds(off_cfg, runs_dir)
    on, on_total, (on_res, attacks) = _flower_rounds(on_cfg, runs_dir)
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


def attacked_model(users: int, rnd: int, seed: int = 0) -> tuple[RunConfig, torch.nn.Module, list[str]]:
    """The default federation's global model after ``rnd`` FedAvg rounds (0: untrained), reproducibly.

    Trained with the plain loop, which the federation tests show equals the Flower run exactly.
    """
    from fl_sim.federation import prepare_users
    from fl_sim.models import build_model, task_heads

    cfg = load_config(None, [f"users={users}", f"rounds={max(rnd, 1)}", f"seed={seed}"])
    ids = [u.user for u in prepare_users(cfg)]
    if rnd == 0:
        return cfg, build_model(cfg.model.name, task_heads(cfg.task, ids), cfg.data.image_size, cfg.model.width, cfg.seed, cfg.model.norm), ids
    model, _ = plain_federation(cfg)
    return cfg, model, ids


def _observations(model: torch.nn.Module, cfg: RunConfig, heads: Any, ids: list[str], photos: dict[str, torch.Tensor],
                  attrs: dict[str, Any], rnd: int) -> list[Any]:
    """Each user's real update on ``photos`` from the global ``model``, as the server observes it."""
    from clients.app import local_seed
    from clients.training import local_train
    from fl_sim.models import user_labels
    from server.observe import build_observation

    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    observations = []
    for u in ids:
        local = copy.deepcopy(model)
        y = torch.tensor(user_labels(heads, u, attrs[u])).expand(len(photos[u]), -1)
        res = local_train(local, photos[u], y, heads, protocol=cfg.protocol, lr=cfg.lr, epochs=cfg.local_epochs,
                          batch_size=cfg.local_batch_size, seed=local_seed(cfg.seed, rnd + 1, u))
        observations.append(build_observation(
            cfg, heads, global_state, local.state_dict(),
            {"num-examples": res.num_examples, "local-steps": res.local_steps, "lr": cfg.lr}, rnd=rnd + 1, user=u))
    return observations


def bench_attack(*, users: int, batch_sizes: list[int], methods: list[str], rounds: list[int], protocol: str,
                 prior_spec: str = "faces32", iterations: int | None = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Each method on every user's update, same models and seeds; scored by the face evaluators.

    For each round R the attacked model is the default federation's global model after R rounds;
    each user's update is one more round of their local training on their first ``batch`` photos.
    """
    from dataclasses import replace

    from attacks.methods import method_config, run_attack
    from attacks.priors import load_prior
    from fl_sim.data import open_dataset
    from fl_sim.models import task_heads
    from fl_sim.scoring import UserTruth, score

    prior = load_prior(prior_spec) if "diffusion" in methods else None
    over = {} if iterations is None else {"iterations": iterations}
    acfgs = {m: method_config(m, **over) for m in methods}
    rows: list[dict[str, Any]] = []
    context: dict[int, Any] = {}
    refs: dict[int, Any] = {}
    images_out: dict[str, dict[int, dict[int, torch.Tensor]]] = {}
    truths: dict[int, Any] = {}
    ids: list[str] = []
    all_photos: dict[str, torch.Tensor] = {}
    for rnd in rounds:
        if progress:
            progress(f"round {rnd}: training the default federation's global model ({users} users)")
        cfg, model, ids = attacked_model(users, rnd)
        cfg = replace(cfg, protocol=protocol)
        heads = task_heads(cfg.task, ids)
        if not all_photos:
            ds = open_dataset(cfg.data.dataset)
            all_photos = {u: ds.photos(u, cfg.data.image_size) for u in ids}
            attrs = {r.user: r.attributes for r in ds.users() if r.user in all_photos}
        for bs in batch_sizes:
            photos = {u: all_photos[u][:bs] for u in ids}
            observations = _observations(model, cfg, heads, ids, photos, attrs, rnd)
            if bs not in truths:
                truths[bs] = UserTruth(ids, photos, attrs)
                context[bs] = truths[bs].context()
                refs[bs] = _references(truths[bs], ids)
            for method in methods:
                if progress:
                    progress(f"round {rnd}, batch {bs}: {method} on {len(ids)} users")
                recs = run_attack(method, observations, prior, acfgs[method])
                images = torch.stack([r.image for r in recs])
                scores = score(images, list(ids), truths[bs])
                images_out.setdefault(method, {}).setdefault(rnd, {})[bs] = images
                mean = lambda key: float(np.mean([s[key] for s in scores]))  # noqa: E731
                rows.append({
                    "method": method, "round": rnd, "protocol": protocol, "batch_size": bs, "users": len(ids),
                    "face_similarity": mean("face_similarity"), "reid_top1": mean("reid_top1"),
                    "reid_top5": mean("reid_top5"), "gender_acc": mean("gender_correct"),
                    "age_band_acc": mean("age_band_correct"),
                    "label_acc": float(np.mean([r.labels.get("gender") == heads[0].classes.index(attrs[u]["gender"])
                                                for r, u in zip(recs, ids)])) if cfg.task == "attributes" else None,
                    "psnr": mean("psnr_mean_photo"), "ssim": mean("ssim_mean_photo"),
                    "seconds_per_user": float(np.mean([r.seconds for r in recs])),
                    "iterations": acfgs[method].iterations,
                })
    return {"rows": rows, "context": context, "references": refs, "images": images_out, "users": ids,
            "photos": {u: all_photos[u][:4] for u in ids},
            "attack_config": {m: {k: getattr(c, k) for k in c.__dataclass_fields__} for m, c in acfgs.items()}}


def _references(truth: Any, ids: list[str]) -> dict[str, float]:
    """Average face (mean of the prior split: no identity) and each user's own mean photo (upper reference)."""
    from fl_sim.data.base import to_tensor
    from fl_sim.data.synthfaces import open_synthfaces
    from fl_sim.scoring import score

    size = truth.photos[ids[0]].shape[-1]
    photos, _ = open_synthfaces("prior").all_photos_uint8()
    avg = to_tensor(photos[:4000], size).mean(0, keepdim=True)
    avg_scores = score(avg.expand(len(ids), -1, -1, -1), list(ids), truth)
    own = score(torch.stack([truth.photos[u].mean(0) for u in ids]), list(ids), truth)
    return {"average_face_similarity": float(np.mean([s["face_similarity"] for s in avg_scores])),
            "average_face_reid_top1": float(np.mean([s["reid_top1"] for s in avg_scores])),
            "mean_photo_similarity": float(np.mean([s["face_similarity"] for s in own])),
            "mean_photo_reid_top1": float(np.mean([s["reid_top1"] for s in own]))}


def attack_figure(res: dict[str, Any], path: Path, max_users: int = 8, batch_size: int | None = None) -> Path:
    """Per user: 4 true photos | each method at each benchmarked round (side by side), labelled."""
    from PIL import Image, ImageDraw

    from fl_sim.evaluators.face import to_uint8_hwc

    methods = list(res["images"])
    rounds = sorted(next(iter(res["images"].values())))
    bs = batch_size or sorted(res["images"][methods[0]][rounds[0]])[0]
    users = res["users"][:max_users]
    tile, gap, head = 72, 10, 34
    cols: list[tuple[str, int | None]] = [("photo", None)] * 4 + [(m, rnd) for rnd in rounds for m in methods]
    width = len(cols) * tile + gap * len(rounds)
    canvas = Image.new("RGB", (width, head + len(users) * tile), "white")
    draw = ImageDraw.Draw(canvas)
    xs, x = [], 0
    for i in range(len(cols)):
        if i >= 4 and (i - 4) % len(methods) == 0:
            x += gap  # a gap before each round's block
        xs.append(x)
        x += tile
    draw.text((2, 2), f"user's photos (batch {bs})", fill="black")
    for i, (name, rnd) in enumerate(cols[4:], start=4):
        if (i - 4) % len(methods) == 0:
            draw.text((xs[i] + 2, 2), f"round {rnd}" + (" (untrained)" if rnd == 0 else ""), fill="black")
        draw.text((xs[i] + 2, 18), name, fill="black")
    for r, u in enumerate(users):
        k = res["users"].index(u)
        tiles = list(to_uint8_hwc(res["photos"][u][:4]))
        tiles += [to_uint8_hwc(res["images"][m][rnd][bs][k:k + 1])[0] for rnd in rounds for m in methods]
        for i, t in enumerate(tiles):
            canvas.paste(Image.fromarray(t).resize((tile - 2, tile - 2), Image.NEAREST), (xs[i], head + r * tile))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def attack_markdown(res: dict[str, Any]) -> str:
    """The attack tables for docs/BENCHMARKS.md: one per round, with the context and references."""
    lines = []
    for rnd in sorted({r["round"] for r in res["rows"]}):
        rows = [r for r in res["rows"] if r["round"] == rnd]
        proto = rows[0]["protocol"]
        lines += [f"**Round {rnd}** ({'untrained model' if rnd == 0 else f'after {rnd} FedAvg rounds'}), "
                  f"{proto}, {rows[0]['users']} users:", "",
                  "| method | batch | face similarity | re-id top-1 | top-5 | gender acc | PSNR (dB) | s/user |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['method']} | {r['batch_size']} | {r['face_similarity']:.3f} | {r['reid_top1']:.2f} | "
                         f"{r['reid_top5']:.2f} | {r['gender_acc']:.2f} | {r['psnr']:.1f} | {r['seconds_per_user']:.2f} |")
        for bs in sorted({r["batch_size"] for r in rows}):
            ref = res["references"][bs]
            lines.append(f"| *average face* | {bs} | {ref['average_face_similarity']:.3f} | "
                         f"{ref['average_face_reid_top1']:.2f} | | | | |")
            lines.append(f"| *user's mean photo* | {bs} | {ref['mean_photo_similarity']:.3f} | "
                         f"{ref['mean_photo_reid_top1']:.2f} | | | | |")
        lines.append("")
        for bs in sorted({r["batch_size"] for r in rows}):
            c = res["context"][bs]
            lines.append(f"Context, batch {bs}: a user's photos match each other at {c['within_user_min']:.2f}.."
                         f"{c['within_user_max']:.2f} (mean {c['within_user_mean']:.2f}); different users "
                         f"{c['between_user_mean']:.2f}.  ")
        lines.append("")
    return "\n".join(lines)


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
