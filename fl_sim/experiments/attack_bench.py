"""The attack benchmark: every method on every user's update, both evaluators, seeds, null controls, intervals."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_sim.experiments.bench import plain_federation
from fl_sim.core.config import RunConfig, load_config
from fl_sim.core.fmt import format_ci


def attacked_model(users: int, rnd: int, seed: int = 0, dataset: str | None = None, size: int = 32
                   ) -> tuple[RunConfig, torch.nn.Module, list[str]]:
    """The default federation's global model after ``rnd`` FedAvg rounds (0: untrained), reproducibly.

    Trained with the plain loop, which the federation tests show equals the Flower run exactly.
    """
    from fl_sim.federation import prepare_users
    from fl_sim.core.models import build_model, task_heads

    data = [f"data.dataset={dataset}"] if dataset else []
    cfg = load_config(None, [f"users={users}", f"rounds={max(rnd, 1)}", f"seed={seed}", f"data.image_size={size}", *data])
    ids = [u.user for u in prepare_users(cfg)]
    if rnd == 0:
        return cfg, build_model(cfg.model.name, task_heads(cfg.task, ids), cfg.data.image_size, cfg.model.width, cfg.seed, cfg.model.norm), ids
    model, _ = plain_federation(cfg)
    return cfg, model, ids


def _observations(model: torch.nn.Module, cfg: RunConfig, heads: Any, ids: list[str], photos: dict[str, torch.Tensor],
                  attrs: dict[str, Any], rnd: int, sources: list[str] | None = None, zero: bool = False) -> list[Any]:
    """Each user's real update on ``photos`` from the global ``model``, as the server observes it.

    ``sources[i]``: whose photos make observation i (default: ``ids[i]`` — the null control passes
    outsiders here); ``zero``: the update is exactly zero (the other null control).
    """
    from fl_sim.core.userbatch import local_seed
    from clients.training import local_train
    from fl_sim.core.models import user_labels
    from fl_sim.core.records import ClientUpdate
    from server.observe import build_observation

    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    observations = []
    for i, u in enumerate(ids):
        src = sources[i] if sources else u
        local = copy.deepcopy(model)
        y = torch.tensor(user_labels(heads, src, attrs[src])).expand(len(photos[src]), -1)
        res = local_train(local, photos[src], y, heads, protocol=cfg.protocol, lr=cfg.lr, epochs=cfg.local_epochs,
                          batch_size=cfg.local_batch_size, seed=local_seed(cfg.seed, rnd + 1, src))
        after = global_state if zero else local.state_dict()
        update = ClientUpdate(user=u, round=rnd + 1, arrays=after, num_examples=res.num_examples,
                              local_steps=res.local_steps, lr=cfg.lr, loss=res.loss)
        observations.append(build_observation(cfg, heads, global_state, after, update, rnd=rnd + 1, user=u))
    return observations


# The null controls every attack bench runs beside the real updates (they must score at chance).
NULLS = ("zero", "outsider")


def bench_attack(*, users: int, batch_sizes: list[int], methods: list[str], rounds: list[int], protocol: str,
                 prior_spec: str = "auto", iterations: int | None = None, seeds: list[int] | None = None,
                 dataset: str | None = None, nulls: bool = True, size: int = 32,
                 progress: Callable[[str], None] | None = None,
                 step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Each method on every user's update, same models and seeds; scored by both face evaluators.
    ``step(done, total)``: attack batches (method x observation kind x batch size x round x seed) done so far.

    For each seed and round R the attacked model is the default federation's global model after R
    rounds (trained with that seed); each user's update is one more round of their local training
    on their first ``batch`` photos. Null controls: the same attack on a zero update, and on the
    update of an *outsider* (someone not among the candidates) scored as if it were the user's.
    Every figure is a mean over users (seeds pooled per user) with a 95 % bootstrap interval.
    """
    from dataclasses import replace

    from attacks.methods import method_config, run_attack
    from fl_sim.core.data import open_dataset
    from fl_sim.core.models import task_heads
    from fl_sim.core.priors import open_prior
    from fl_sim.core.scoring import UserTruth, score

    from fl_sim.core.priors import resolve_prior

    seeds = seeds or [0]
    prior_spec = resolve_prior(prior_spec, size)
    prior = open_prior(prior_spec) if "diffusion" in methods else None
    over = {} if iterations is None else {"iterations": iterations}
    acfgs = {(m, s): method_config(m, size, seed=s, **over) for m in methods for s in seeds}
    records: dict[tuple[int, int, str, str], list[tuple[str, dict[str, Any]]]] = {}  # (rnd, bs, method, kind)
    seconds: dict[tuple[int, int, str], list[float]] = {}
    label_hits: dict[tuple[int, int, str], list[float]] = {}
    context: dict[int, Any] = {}
    refs: dict[int, Any] = {}
    images_out: dict[str, dict[int, dict[int, torch.Tensor]]] = {}
    truths: dict[int, Any] = {}
    ids: list[str] = []
    all_photos: dict[str, torch.Tensor] = {}
    attrs: dict[str, Any] = {}
    outsiders: list[str] = []
    spec = dataset or "synthfaces"
    n_batches, done = len(seeds) * len(rounds) * len(batch_sizes) * len(methods) * (1 + len(NULLS) if nulls else 1), 0
    if step:
        step(0, n_batches)
    for seed in seeds:
        for rnd in rounds:
            if progress:
                progress(f"seed {seed}, round {rnd}: training the default federation's global model ({users} users, {spec})")
            cfg, model, ids = attacked_model(users, rnd, seed, dataset, size)
            cfg = replace(cfg, protocol=protocol)
            heads = task_heads(cfg.task, ids)
            if not all_photos:
                ds = open_dataset(cfg.data.dataset)
                need = max(batch_sizes)
                pool = [r.user for r in ds.users() if r.n_photos >= need]
                # Outsiders: identities of the same dataset that are not candidates (cycled if fewer).
                outsiders = [u for u in pool if u not in ids]
                if nulls and not outsiders:
                    raise RuntimeError(f"dataset {spec} has no identity outside the {users} candidates for the null control")
                attrs = {r.user: r.attributes for r in ds.users()}
                all_photos = {u: ds.photos(u, cfg.data.image_size) for u in [*ids, *outsiders]}
            out_of = [outsiders[i % len(outsiders)] for i in range(len(ids))] if outsiders else []
            for bs in batch_sizes:
                photos = {u: all_photos[u][:bs] for u in all_photos}
                obs = {"real": _observations(model, cfg, heads, ids, photos, attrs, rnd)}
                if nulls:
                    obs["zero"] = _observations(model, cfg, heads, ids, photos, attrs, rnd, zero=True)
                    obs["outsider"] = _observations(model, cfg, heads, ids, photos, attrs, rnd, sources=out_of)
                if bs not in truths:
                    truths[bs] = UserTruth(ids, {u: photos[u] for u in ids}, {u: attrs[u] for u in ids})
                    context[bs] = {ev: truths[bs].context(ev) for ev in truths[bs].evaluators}
                    refs[bs] = _references(truths[bs], ids)
                for method in methods:
                    for kind, observations in obs.items():
                        if progress:
                            progress(f"seed {seed}, round {rnd}, batch {bs}: {method} on {len(ids)} users ({kind})")
                        recs = run_attack(method, observations, prior, acfgs[(method, seed)])
                        images = torch.stack([r.image for r in recs])
                        scores = score(images, list(ids), truths[bs])
                        records.setdefault((rnd, bs, method, kind), []).extend(zip(ids, scores))
                        done += 1
                        if step:
                            step(done, n_batches)
                        if kind != "real":
                            continue
                        seconds.setdefault((rnd, bs, method), []).extend(r.seconds for r in recs)
                        if cfg.task == "attributes":
                            label_hits.setdefault((rnd, bs, method), []).extend(
                                float(r.labels.get("gender") == heads[0].classes.index(attrs[u]["gender"]))
                                for r, u in zip(recs, ids) if attrs[u].get("gender"))
                        if seed == seeds[0]:
                            images_out.setdefault(method, {}).setdefault(rnd, {})[bs] = images
    rows = _bench_rows(records, seconds, label_hits, methods, rounds, batch_sizes, protocol, len(ids), seeds, acfgs)
    return {"rows": rows, "comparisons": _comparisons(records, methods, rounds, batch_sizes),
            "agreement": _agreement(records, methods, rounds, batch_sizes),
            "context": context, "references": refs, "images": images_out, "users": ids, "seeds": seeds,
            "dataset": spec, "image_size": size, "prior": prior_spec if prior is not None else None, "outsiders": outsiders, "chance_reid_top1": 1.0 / len(ids),
            "photos": {u: all_photos[u][:4] for u in ids},
            "attack_config": {m: {k: getattr(c, k) for k in c.__dataclass_fields__ if k != "seed"}
                              for (m, s), c in acfgs.items() if s == seeds[0]}}


def _bench_rows(records: dict[tuple[int, int, str, str], list[tuple[str, dict[str, Any]]]],
                seconds: dict[tuple[int, int, str], list[float]], label_hits: dict[tuple[int, int, str], list[float]],
                methods: list[str], rounds: list[int], batch_sizes: list[int], protocol: str, n_users: int,
                seeds: list[int], acfgs: dict[tuple[str, int], Any]) -> list[dict[str, Any]]:
    """One row per round x batch size x method x evaluator, every figure with its interval."""
    from fl_sim.core.leakage import per_user, summarize
    from fl_sim.core.scoring import EVALUATORS
    from fl_sim.core.stats import mean_ci, paired_difference

    rows = []
    for rnd in rounds:
        for bs in batch_sizes:
            for method in methods:
                real = records[(rnd, bs, method, "real")]
                units, scores = [u for u, _ in real], [s for _, s in real]
                summ = summarize(scores, units)
                null_recs = [x for kind in NULLS for x in records.get((rnd, bs, method, kind), [])]
                null = summarize([s for _, s in null_recs], [u for u, _ in null_recs]) if null_recs else None
                per_kind = {kind: summarize([s for _, s in records[(rnd, bs, method, kind)]],
                                            [u for u, _ in records[(rnd, bs, method, kind)]])
                            for kind in NULLS if (rnd, bs, method, kind) in records}
                common = {"method": method, "round": rnd, "protocol": protocol, "batch_size": bs, "users": n_users,
                          "seeds": list(seeds), "chance_reid_top1": 1.0 / n_users}
                gender = mean_ci([s.get("gender_correct") for s in scores], units, proportion=True)
                psnr_, ssim_ = mean_ci([s["psnr_mean_photo"] for s in scores], units), \
                    mean_ci([s["ssim_mean_photo"] for s in scores], units)
                hits = label_hits.get((rnd, bs, method))
                for ev in EVALUATORS:
                    e = summ["evaluators"][ev]
                    row = {**common, "evaluator": ev,
                           "reid_top1": e["reid_top1"], "reid_top1_ci": e["reid_top1_ci"],
                           "reid_top5": e["reid_top5"], "reid_top5_ci": e["reid_top5_ci"],
                           "mean_rank": e["reid_rank"], "mean_rank_ci": e["reid_rank_ci"],
                           "identity_gain": e["identity_gain"], "identity_gain_ci": e["identity_gain_ci"],
                           "face_similarity": e["face_similarity"], "face_similarity_ci": e["face_similarity_ci"],
                           "reid_top1_disagree": summ.get("reid_top1_disagree"),
                           "gender_acc": gender[0], "gender_acc_ci": list(gender[1]),
                           "label_acc": float(np.mean(hits)) if hits else None,
                           "psnr": psnr_[0], "ssim": ssim_[0],
                           "seconds_per_user": float(np.mean(seconds[(rnd, bs, method)])),
                           "iterations": acfgs[(method, seeds[0])].iterations}
                    if null is not None:
                        n = null["evaluators"][ev]
                        row.update({"null_reid_top1": n["reid_top1"], "null_reid_top1_ci": n["reid_top1_ci"],
                                    "null_identity_gain": n["identity_gain"], "null_identity_gain_ci": n["identity_gain_ci"],
                                    "null_above_chance": bool(n["reid_top1_ci"][0] > 1.0 / n_users)})
                        # Identity gain beyond the null's, paired per user: a sharp but wrong face
                        # can score above the blurry average face; this is what the update adds.
                        gain_real = per_user(scores, units, f"{ev}_identity_gain")
                        gain_null = per_user([s for _, s in null_recs], [u for u, _ in null_recs], f"{ev}_identity_gain")
                        d = paired_difference(gain_real, gain_null)
                        row.update({"identity_gain_over_null": d["difference"], "identity_gain_over_null_ci": d["ci"]})
                        for kind, k in per_kind.items():
                            row[f"null_{kind}_reid_top1"] = k["evaluators"][ev]["reid_top1"]
                            row[f"null_{kind}_identity_gain"] = k["evaluators"][ev]["identity_gain"]
                    rows.append(row)
    return rows


def _comparisons(records: dict[tuple[int, int, str, str], list[tuple[str, dict[str, Any]]]], methods: list[str],
                 rounds: list[int], batch_sizes: list[int]) -> list[dict[str, Any]]:
    """Every pair of methods under every evaluator: the paired difference over users and its interval.
    A lead is called only where the interval excludes 0."""
    from fl_sim.core.leakage import per_user
    from fl_sim.core.scoring import EVALUATORS
    from fl_sim.core.stats import paired_difference

    out = []
    for rnd in rounds:
        for bs in batch_sizes:
            for i, a in enumerate(methods):
                for b in methods[i + 1:]:
                    ra, rb = records[(rnd, bs, a, "real")], records[(rnd, bs, b, "real")]
                    for ev in EVALUATORS:
                        for key in ("reid_top1", "identity_gain"):
                            pa = per_user([s for _, s in ra], [u for u, _ in ra], f"{ev}_{key}")
                            pb = per_user([s for _, s in rb], [u for u, _ in rb], f"{ev}_{key}")
                            d = paired_difference(pa, pb)
                            lead = (a if d["difference"] > 0 else b) if d["significant"] else None
                            out.append({"round": rnd, "batch_size": bs, "evaluator": ev, "metric": key,
                                        "a": a, "b": b, **d, "lead": lead})
    return out


def _agreement(records: dict[tuple[int, int, str, str], list[tuple[str, dict[str, Any]]]], methods: list[str],
               rounds: list[int], batch_sizes: list[int]) -> list[dict[str, Any]]:
    """Per method: do the two evaluators agree within their intervals? The headline is the lower."""
    from fl_sim.core.leakage import summarize

    out = []
    for rnd in rounds:
        for bs in batch_sizes:
            for m in methods:
                real = records[(rnd, bs, m, "real")]
                s = summarize([x for _, x in real], [u for u, _ in real])
                out.append({"round": rnd, "batch_size": bs, "method": m,
                            **{k: s.get(k) for k in ("reid_top1", "reid_top1_ci", "reid_top1_evaluator",
                                                     "reid_top1_disagree", "identity_gain", "identity_gain_ci",
                                                     "identity_gain_evaluator", "identity_gain_disagree")}})
    return out


def _references(truth: Any, ids: list[str]) -> dict[str, dict[str, float]]:
    """Per evaluator: the prior's average face (mean of the prior split: no identity) and each
    user's own mean photo (an upper reference), scored like reconstructions."""
    from fl_sim.core.data.base import to_tensor
    from fl_sim.core.data.synthfaces import open_synthfaces
    from fl_sim.core.scoring import score

    size = truth.photos[ids[0]].shape[-1]
    photos, _ = open_synthfaces("prior").all_photos_uint8()
    avg = to_tensor(photos[:4000], size).mean(0, keepdim=True)
    avg_scores = score(avg.expand(len(ids), -1, -1, -1), list(ids), truth)
    own = score(torch.stack([truth.photos[u].mean(0) for u in ids]), list(ids), truth)
    out: dict[str, dict[str, float]] = {}
    for ev in truth.evaluators:
        m = lambda rows, k: float(np.mean([r[f"{ev}_{k}"] for r in rows]))  # noqa: E731
        out[ev] = {"average_face_similarity": m(avg_scores, "face_similarity"),
                   "average_face_reid_top1": m(avg_scores, "reid_top1"),
                   "average_face_identity_gain": m(avg_scores, "identity_gain"),
                   "mean_photo_similarity": m(own, "face_similarity"), "mean_photo_reid_top1": m(own, "reid_top1"),
                   "mean_photo_identity_gain": m(own, "identity_gain")}
    return out


def attack_figure(res: dict[str, Any], path: Path, max_users: int = 8, batch_size: int | None = None) -> Path:
    """Per user: 4 true photos | each method at each benchmarked round (side by side), labelled."""
    from PIL import Image, ImageDraw

    from fl_sim.core.evaluators.face import to_uint8_hwc

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
    """The attack tables for docs/BENCHMARKS.md: one per round, both evaluators, intervals, nulls."""
    lines = []
    seeds = ",".join(map(str, res.get("seeds", [0])))
    for rnd in sorted({r["round"] for r in res["rows"]}):
        rows = [r for r in res["rows"] if r["round"] == rnd]
        proto = rows[0]["protocol"]
        lines += [f"**Round {rnd}** ({'untrained model' if rnd == 0 else f'after {rnd} FedAvg rounds'}), {proto}, "
                  f"{rows[0]['users']} users of `{res.get('dataset', 'synthfaces')}`, seeds {seeds} pooled per user; "
                  f"95 % bootstrap intervals over users; re-id by chance {rows[0]['chance_reid_top1']:.2f}:", "",
                  "| method | evaluator | batch | re-id top-1 | mean rank | identity gain | null re-id | null gain | "
                  "gain over null | gender acc | s/user |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['method']} | {r['evaluator']} | {r['batch_size']} | {format_ci(r['reid_top1'], r['reid_top1_ci'])} | "
                         f"{format_ci(r['mean_rank'], r['mean_rank_ci'], 1)} | {format_ci(r['identity_gain'], r['identity_gain_ci'], 3)} | "
                         f"{format_ci(r.get('null_reid_top1'), r.get('null_reid_top1_ci'))} | "
                         f"{format_ci(r.get('null_identity_gain'), r.get('null_identity_gain_ci'), 3)} | "
                         f"{format_ci(r.get('identity_gain_over_null'), r.get('identity_gain_over_null_ci'), 3)} | "
                         f"{format_ci(r['gender_acc'], r['gender_acc_ci'])} | {r['seconds_per_user']:.2f} |")
        for bs in sorted({r["batch_size"] for r in rows}):
            for ev, ref in res["references"][bs].items():
                lines.append(f"| *average face (prior)* | {ev} | {bs} | {ref['average_face_reid_top1']:.2f} | | "
                             f"{ref['average_face_identity_gain']:.3f} | | | | | |")
                lines.append(f"| *user's mean photo* | {ev} | {bs} | {ref['mean_photo_reid_top1']:.2f} | | "
                             f"{ref['mean_photo_identity_gain']:.3f} | | | | | |")
        lines.append("")
        for c in [c for c in res.get("comparisons", []) if c["round"] == rnd]:
            verdict = f"**{c['lead']} leads**" if c["lead"] else "no difference called (interval includes 0)"
            lines.append(f"- {c['a']} − {c['b']}, {c['metric']} under {c['evaluator']} (batch {c['batch_size']}): "
                         f"{c['difference']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] — {verdict}")
        for a in [a for a in res.get("agreement", []) if a["round"] == rnd]:
            flag = " — **the evaluators disagree beyond their intervals**" if a.get("reid_top1_disagree") else ""
            lines.append(f"- {a['method']} (batch {a['batch_size']}) headline re-id (lower evaluator, "
                         f"{a['reid_top1_evaluator']}): {format_ci(a['reid_top1'], a['reid_top1_ci'])}{flag}")
        lines.append("")
        for bs in sorted({r["batch_size"] for r in rows}):
            for ev, c in res["context"][bs].items():
                lines.append(f"Context ({ev}), batch {bs}: a user's photos match each other at {c['within_user_min']:.2f}.."
                             f"{c['within_user_max']:.2f} (mean {c['within_user_mean']:.2f}); different users "
                             f"{c['between_user_mean']:.2f}.  ")
        lines.append("")
    return "\n".join(lines)
