"""`fl-sim bench adversary`: a malicious server's tactics beside the curious server, per client defense, each cell one
real Flower federation; leakage (photos recovered, re-identification), detection (model_check) and cost per cell."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_sim.core.config import RunConfig, load_config
from fl_sim.core.errors import FlSimError
from fl_sim.core.stats import bootstrap_ci
from fl_sim.core.store import RunStore
from fl_sim.experiments.adversary_report import flagged_count

TACTICS = ("curious", "imprint", "inconsistency")
# Defense cells: what each turns on (model_check always runs: flag everywhere, refuse where it is the defense).
DEFENSES: dict[str, tuple[str, ...]] = {
    "none": (),
    "dp-sgd": ("dp_sgd",),
    "secagg": ("secagg",),
    "dp-sgd+secagg": ("dp_sgd", "secagg"),
    "model_check": ("model_check",),
    "model_check+secagg": ("model_check", "secagg"),
}
# The default grid: what each tactic is measured against. Imprint needs one user's update, so it is not run under
# SecAgg+ (refused at config time); inconsistency is the tactic against SecAgg+, so its cells keep SecAgg+ on.
CELLS: tuple[tuple[str, str], ...] = (
    ("curious", "none"), ("curious", "secagg"),
    ("imprint", "none"), ("imprint", "dp-sgd"), ("imprint", "model_check"),
    ("inconsistency", "none"), ("inconsistency", "secagg"), ("inconsistency", "dp-sgd+secagg"),
    ("inconsistency", "model_check+secagg"),
)
PHOTOS_AVAILABLE = 80  # synthfaces holds 80 photos per identity; the held-out photos come out of them


@dataclass(frozen=True)
class Plan:
    """The bench's settings (one set for every cell)."""

    users: int
    batch_sizes: tuple[int, ...]
    protocol: str
    warmup: int  # honest rounds before the attacked ones (the attacks see a model trained that long)
    targets: int  # inconsistency: users targeted, one per round (and the curious aggregate rounds)
    methods: tuple[str, ...]  # user-level attacks (curious server, and on inconsistency's recovered update)
    iterations: int
    dp_noise: float  # z of the DP-SGD cells
    wait_s: float  # model_check's wait for the round's digests (the refuse cells)
    clean_noise: float  # imprint: the prior's cleaning of mixed bins (0: off)
    seed: int
    overrides: tuple[str, ...]  # extra --set, applied to every cell

    def holdout(self, batch: int) -> int:
        return min(8, PHOTOS_AVAILABLE - batch)


def cell_overrides(plan: Plan, tactic: str, defense: str, batch: int) -> list[str]:
    """The config of one cell: the federation, the adversary, the defenses and the attacks."""
    one_round = tactic == "imprint" or (tactic == "curious" and defense == "none")  # every user in one round
    first, last = plan.warmup + 1, plan.warmup + (1 if one_round else plan.targets)
    rounds = list(range(first, last + 1))
    out = [f"seed={plan.seed}", f"users={plan.users}", f"protocol={plan.protocol}", f"rounds={last}",
           f"data.photos_per_user={batch}", f"data.holdout_per_user={plan.holdout(batch)}",
           "attack.enabled=true", f"attack.methods={','.join(plan.methods)}", f"attack.iterations={plan.iterations}",
           f"attack.queue_size={max(8, len(rounds))}", "attack.users=all",
           "defenses.model_check.enabled=true"]
    on = DEFENSES[defense]
    out.append("defenses.model_check.action=" + ("refuse" if "model_check" in on else "flag"))
    if "model_check" in on and plan.wait_s:
        out.append(f"defenses.model_check.wait_s={plan.wait_s}")
    if "secagg" in on:
        out.append("defenses.secagg.enabled=true")
    if "dp_sgd" in on:
        out += ["defenses.dp_sgd.enabled=true", f"defenses.dp_sgd.noise_multiplier={plan.dp_noise}"]
    rs = ",".join(map(str, rounds))
    if tactic == "curious":
        out.append(f"attack.rounds={rs}")
    else:
        # Cleaning answers "does the prior help a clean read?": only without a defense (under DP-SGD every bin is
        # noise, and cleaning them all would cost the whole bench's time for nothing to measure).
        if tactic == "imprint" and defense == "none" and plan.clean_noise:
            out.append(f"adversary.imprint.clean_noise={plan.clean_noise}")
        # The tactic's rounds are crafted: the curious server never attacks them as honest rounds, only the
        # tactic's recovered updates are attacked (so attack.rounds only names a crafted round).
        out += ["adversary.mode=malicious", f"adversary.tactic={tactic}", f"adversary.rounds={rs}",
                f"attack.rounds={first}",
                "adversary.users=" + ("all" if tactic == "imprint" else f"sample:{plan.targets}")]
    return out + list(plan.overrides)


def check_plan(plan: Plan) -> None:
    """Every configuration error before anything runs (one line each)."""
    from fl_sim.federation import prepare_users

    if plan.users < 8:
        raise FlSimError(f"--users: SecAgg+ and model inconsistency need at least 8 users per round, got {plan.users}")
    if not 1 <= plan.targets <= plan.users:
        raise FlSimError(f"--targets: 1..{plan.users} (one targeted user per round), got {plan.targets}")
    for b in plan.batch_sizes:
        if b > PHOTOS_AVAILABLE - 1:
            raise FlSimError(f"--batch-sizes: {b} photos per user, but the embedded faces hold {PHOTOS_AVAILABLE} per "
                             f"identity (at most {PHOTOS_AVAILABLE - 1}, one kept back)")
        for tactic, defense in CELLS:
            cfg = load_config(None, cell_overrides(plan, tactic, defense, b))
            if b == plan.batch_sizes[0] and (tactic, defense) == CELLS[0]:
                prepare_users(cfg)  # data errors (too few photos, ...) before the first federation


def _targets_by_round(plan: Plan, batch: int, users: list[str]) -> dict[int, str]:
    """Inconsistency's target per round (the same seeded sample and rotation its server uses): whom the curious
    server's aggregate attack is asked to re-identify in the same rounds."""
    from fl_sim.core.adversary import adversary_targets, round_index

    mal = load_config(None, cell_overrides(plan, "inconsistency", "secagg", batch))
    targets = adversary_targets(mal, users)
    return {r: targets[round_index(mal, r) % len(targets)] for r in mal.adversary.rounds}


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


def fp_rate(flagged: int, honest: int) -> float | None:
    """Honest rounds the model check flagged, as a share (None: no honest round)."""
    return flagged / honest if honest else None


def cell_row(st: RunStore, cfg: RunConfig, plan: Plan, tactic: str, defense: str, batch: int,
             wall_s: float) -> dict[str, Any]:
    """One row of the bench from a finished run's store: per user the best of the methods (the server runs them all),
    then means over the attacked users with 95 % intervals over users; detection from the clients' checks."""
    users = [u["user"] for u in st.users()]
    attacks = st.attacks()
    rounds = [r["round"] for r in st.rounds()]
    crafted = {r["round"] for r in st.rounds() if (r["metrics"] or {}).get("adversary")}
    per_user: dict[str, dict[str, float]] = {}
    statuses: dict[str, int] = {}
    seconds = 0.0
    by_method: dict[str, dict[str, list[float]]] = {}
    cleaning: dict[str, int] = {}
    target_of = _targets_by_round(plan, batch, users) if tactic == "curious" and defense != "none" else {}
    for a in attacks:
        statuses[a["status"]] = statuses.get(a["status"], 0) + 1
        m = a["metrics"] or {}
        seconds += _finite(m.get("seconds")) or 0.0
        if a["status"] not in ("finished", "no-signal"):
            continue
        user = a["user"]
        if user is None:  # an aggregate (SecAgg+): does it re-identify the user the malicious server would target?
            user = target_of.get(int(a["round"]))
            if user is None:
                continue
            evs = [k[:-len("_best_match")] for k in m if k.endswith("_best_match")]
            reid = float(bool(evs) and all(m[f"{e}_best_match"] == user for e in evs))
            photos = None
        elif a["status"] == "no-signal":  # nothing reached the server: nothing learned
            reid, photos = 0.0, 0.0
        else:
            reid, photos = float(m.get("reid_top1") or 0), _finite(m.get("photos_recovered"))
        cur = per_user.setdefault(user, {"reid_top1": 0.0})
        if isinstance(m.get("cleaned"), dict):  # imprint with the prior's cleaning of mixed bins
            cur["photos_recovered_cleaned"] = float(m["cleaned"]["photos_recovered"])
            for k in ("mixed", "mixed_recovered_raw", "mixed_recovered_cleaned"):
                cleaning[k] = cleaning.get(k, 0) + int(m["cleaned"][k])
        cur["reid_top1"] = max(cur["reid_top1"], reid)
        if photos is not None:
            cur["photos_recovered"] = max(cur.get("photos_recovered", 0.0), photos)
        for key, val in (("reid_top1", reid), ("photos_recovered", photos)):
            if val is not None:
                by_method.setdefault(a["method"], {}).setdefault(key, []).append(val)
    attacked = sorted(per_user)

    def summary(key: str) -> tuple[float | None, list[float] | None]:
        vals = [per_user[u][key] for u in attacked if key in per_user[u]]
        if not vals:
            return None, None
        lo, hi = bootstrap_ci(vals, proportion=True)
        return sum(vals) / len(vals), [lo, hi]

    checks = st.checks("model_check")
    flagged = {rnd: [u for u, c in recs.items() if c.get("inconsistent") or c.get("imprint")]
               for rnd, recs in checks.items()}
    tactic_rounds = sorted(crafted)
    honest = [r for r in rounds if r not in crafted]
    detected = (sum(bool(flagged.get(r)) for r in tactic_rounds) / len(tactic_rounds)) if tactic_rounds else None
    flagged_honest = sum(bool(flagged.get(r)) for r in honest)
    fp = fp_rate(flagged_honest, len(honest))
    able = [len(flagged.get(r, [])) / max(len(checks.get(r, {})), 1) for r in tactic_rounds]
    refused = [u for r in tactic_rounds for u, c in checks.get(r, {}).items() if c.get("refused")]
    photos, photos_ci = summary("photos_recovered")
    cleaned, cleaned_ci = summary("photos_recovered_cleaned")
    reid, reid_ci = summary("reid_top1")
    return {
        "tactic": tactic, "defense": defense, "batch_size": batch, "protocol": cfg.protocol,
        "photos_recovered": photos, "photos_recovered_ci": photos_ci,
        "photos_recovered_cleaned": cleaned, "photos_recovered_cleaned_ci": cleaned_ci, "cleaning": cleaning or None,
        "reid_top1": reid, "reid_top1_ci": reid_ci, "reid_chance": 1 / len(users),
        "detected": detected if tactic != "curious" else fp,
        "false_positives": flagged_honest, "false_positive_rate": fp,
        "honest_rounds": len(honest), "tactic_rounds": len(tactic_rounds),
        "clients_detecting": sum(able) / len(able) if able else None, "refusals": len(refused),
        "seconds_per_user": seconds / len(attacked) if attacked else None, "wall_s": wall_s,
        "attacked_users": len(attacked), "statuses": statuses,
        "by_method": {k: {kk: sum(vv) / len(vv) for kk, vv in v.items()} for k, v in by_method.items()},
        "run_id": st.dir.name,
    }


def bench_adversary(plan: Plan, runs_dir: Path, progress: Callable[[str], None] | None = None,
                    cells: tuple[tuple[str, str], ...] = CELLS) -> dict[str, Any]:
    """Every (batch size, tactic, defense) cell as its own federation, one after the other in this process."""
    from fl_sim.federation import run_federation

    rows: list[dict[str, Any]] = []
    for batch in plan.batch_sizes:
        for tactic, defense in cells:
            cfg = load_config(None, cell_overrides(plan, tactic, defense, batch))
            if progress:
                progress(f"{tactic} / {defense} / batch {batch}")
            t0 = time.time()
            res = run_federation(cfg, runs_dir, None)
            wall = time.time() - t0
            if res.status != "finished":
                raise RuntimeError(f"bench adversary: the {tactic}/{defense} run failed: {res.error}")
            st = RunStore(res.run_dir / "store.sqlite", readonly=True)
            try:
                rows.append(cell_row(st, cfg, plan, tactic, defense, batch, wall))
            finally:
                st.close()
    res = summarise(plan, rows, runs_dir)
    res["references"] = [mean_photo_reference(plan, b) for b in plan.batch_sizes]
    return save_result(res, runs_dir)


def mean_photo_reference(plan: Plan, batch: int) -> dict[str, Any]:
    """What 25 dB means on these faces: each user's *mean* photo as the one candidate (no attack, no update) —
    the share of their photos it "recovers" under the bench's rule (one photo per candidate), and the share of
    photos within 25 dB of it. A reconstruction of the user's average look can pass the threshold this often."""
    import numpy as np

    from fl_sim.core.data import open_dataset
    from fl_sim.core.scoring import RECOVERED_PSNR, pair_psnr
    from fl_sim.federation import prepare_users

    cfg = load_config(None, cell_overrides(plan, *CELLS[0], batch))
    ds = open_dataset(cfg.data.dataset)
    one, within = [], []
    for u in prepare_users(cfg):
        photos = ds.photos(u.user, cfg.data.image_size)[:batch].float()
        db = pair_psnr(photos.mean(0, keepdim=True), photos)[0]  # the mean photo against each photo
        one.append(float(db.max() >= RECOVERED_PSNR) / len(photos))
        within.append(float((db >= RECOVERED_PSNR).mean()))
    return {"batch_size": batch, "mean_photo_photos_recovered": float(np.mean(one)),
            "photos_within_25db_of_mean_photo": float(np.mean(within)),
            "users_with_a_photo_within_25db_of_mean": int(sum(v > 0 for v in one)), "users": len(one)}


def summarise(plan: Plan, rows: list[dict[str, Any]], runs_dir: Path) -> dict[str, Any]:
    """The bench's result: its settings, the rows, and the false positives over every honest round of the bench."""
    first = load_config(None, cell_overrides(plan, *CELLS[0], plan.batch_sizes[0]))
    honest = sum(r["honest_rounds"] for r in rows)
    flagged = sum(flagged_count(r) for r in rows)
    return {"config": {"users": plan.users, "batch_sizes": list(plan.batch_sizes), "protocol": plan.protocol,
                       "dataset": first.data.dataset, "image_size": first.data.image_size,
                       "warmup_rounds": plan.warmup, "targets": plan.targets, "methods": list(plan.methods),
                       "iterations": plan.iterations, "dp_noise_multiplier": plan.dp_noise,
                       "model_check_wait_s": plan.wait_s, "imprint_clean_noise": plan.clean_noise, "seed": plan.seed, "overrides": list(plan.overrides)},
            "rows": rows,
            "false_positives": {"honest_rounds": honest, "flagged": flagged,
                                "rate": fp_rate(flagged, honest)},
            "runs_dir": str(runs_dir.resolve())}


def save_result(res: dict[str, Any], runs_dir: Path) -> dict[str, Any]:
    """Keep the result beside its runs (``adversary-<time>.json``: ``--from`` re-renders it); its path in ``saved``."""
    import json

    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"adversary-{time.strftime('%Y%m%d-%H%M%S')}.json"
    res = {**res, "saved": str(path.resolve())}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    tmp.replace(path)
    return res
