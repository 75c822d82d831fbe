"""`fl-sim sweep`: a grid of federations, and leakage vs utility against the defense parameter."""

from __future__ import annotations

import itertools
import json
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fl_sim.core.config import RunConfig, load_config
from fl_sim.core.errors import ConfigError
from fl_sim.core.fmt import format_ci, number
from fl_sim.core.store import RunStore


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``key=v1,v2`` strings -> [(key, [v1, v2])]."""
    out = []
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise ConfigError(f"--grid expects key=v1,v2,..., got {item!r}")
        out.append((key.strip(), vals))
    if not out:
        raise ConfigError("fl-sim sweep needs at least one --grid key=v1,v2,...")
    return out


def grid_configs(config: Path | None, overrides: list[str], grid: list[tuple[str, list[str]]]
                 ) -> list[tuple[dict[str, str], RunConfig]]:
    """Every grid point's config, all validated (keys, then each point's users and photos) before any federation runs."""
    from fl_sim.federation import prepare_users

    points = []
    for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in grid]):
        point = dict(combo)
        points.append((point, load_config(config, [*overrides, *(f"{k}={v}" for k, v in point.items())])))
    for _, cfg in points:
        prepare_users(cfg)  # data errors (a missing user, a corrupt photo, nothing to learn) before the first run
    return points


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Utility and leakage of one finished run, read from its store, each with a 95 % interval.

    Utility is the last round's held-out accuracy, bootstrapped over users. Leakage is the
    strongest attack's: per method, re-identification top-1 and identity gain under each
    evaluator (intervals over users), the headline being the lower evaluator's; the strongest
    method is the one with the highest headline identity gain. An aggregate attack (SecAgg+) has no
    target user: its gain is to the best-matching user, one unit per round; re-id does not apply.
    """
    from fl_sim.core.leakage import summarize
    from fl_sim.core.scoring import EVALUATORS
    from fl_sim.core.stats import bootstrap_ci

    from fl_sim.experiments.inspect_run import detected_share, detection_table

    st = RunStore(run_dir / "store.sqlite", readonly=True)
    try:
        rounds, updates, attacks = st.rounds(), st.updates(), st.attacks()
        detected = detected_share(detection_table(st))
    finally:
        st.close()
    eps = [u["metrics"]["dp-epsilon"] for u in updates if "dp-epsilon" in u["metrics"]]
    dp_users = {u["user"] for u in updates if "dp_sgd" in (u["defenses"] or {})}
    per_method: dict[str, dict[str, Any]] = {}
    for method in sorted({a["method"] for a in attacks}):
        done = [a for a in attacks if a["method"] == method and a["status"] == "finished"]
        if not done:
            continue
        units = [a["user"] if a["user"] is not None else f"round {a['round']}" for a in done]
        summ = summarize([a["metrics"] for a in done], units)
        per_method[method] = {
            "attacks": len(done), "no_signal": sum(a["status"] == "no-signal" for a in attacks if a["method"] == method),
            "reid_top1": summ["reid_top1"], "reid_top1_ci": summ["reid_top1_ci"],
            "identity_gain": summ["identity_gain"], "identity_gain_ci": summ["identity_gain_ci"],
            # Mean similarity to the target (an aggregate: to its best match), the lower evaluator's.
            "face_similarity": _mean([_lower_similarity(a["metrics"]) for a in done]),
            "evaluators_disagree": summ["evaluators_disagree"],
            **{f"{ev}_{k}": summ["evaluators"][ev][k] for ev in EVALUATORS
               for k in ("reid_top1", "reid_top1_ci", "identity_gain", "identity_gain_ci")},
            **_rate("gender_accuracy", [a["metrics"].get("gender_correct") for a in done], units),
            **_rate("age_band_accuracy", [a["metrics"].get("age_band_correct") for a in done], units),
            "aggregate": all(a["user"] is None for a in done),
        }
    scored = [m for m in per_method if per_method[m]["identity_gain"] is not None]
    best = max(scored, key=lambda m: per_method[m]["identity_gain"]) if scored else None
    head = per_method.get(best, {}) if best else {}
    acc_users = list((rounds[-1]["metrics"].get("per_user_accuracy") or {}).values()) if rounds else []
    acc_ci = bootstrap_ci([a for a in acc_users if a is not None and math.isfinite(a)],
                          proportion=True) if acc_users else None
    return {
        "epsilon": max(eps) if eps else None,
        "dp_sgd_users": len(dp_users - {None}),
        "accuracy": rounds[-1]["accuracy"] if rounds else None, "accuracy_ci": list(acc_ci) if acc_ci else None,
        **{k: head.get(k) for k in ("reid_top1", "reid_top1_ci", "identity_gain", "identity_gain_ci", "face_similarity",
                                    "evaluators_disagree", "gender_accuracy", "gender_accuracy_ci",
                                    "age_band_accuracy", "age_band_accuracy_ci",
                                    *(f"{ev}_{k}" for ev in EVALUATORS
                                      for k in ("reid_top1", "reid_top1_ci", "identity_gain", "identity_gain_ci")))},
        "strongest_method": best, "methods": per_method,
        "detected": detected,  # share of rounds a client's model check flagged (None: no client checked)
    }


def _lower_similarity(metrics: dict[str, Any]) -> float | None:
    """The lower evaluator's similarity of a reconstruction to its user (an aggregate's: to its best match)."""
    from fl_sim.core.scoring import EVALUATORS

    vals = [metrics.get(f"{ev}_face_similarity", metrics.get(f"{ev}_best_match_similarity")) for ev in EVALUATORS]
    vals = [float(v) for v in vals if v is not None]
    return min(vals) if vals else None


def _rate(key: str, hits: list[Any], units: list[str]) -> dict[str, Any]:
    """A success rate over users with its 95 % interval (None where no truth was known)."""
    from fl_sim.core.stats import mean_ci

    if all(h is None for h in hits):
        return {key: None, f"{key}_ci": None}
    mean, ci = mean_ci(hits, units, proportion=True)
    return {key: mean, f"{key}_ci": list(ci)}


def _mean(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None


def run_sweep(config: Path | None, overrides: list[str], grid: list[tuple[str, list[str]]], runs_dir: Path,
              progress: Callable[[str], None] | None = None, baseline: bool = False,
              step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run every grid point as its own federation (run folders beside the sweep's), then write
    sweep.json, sweep.md and sweep.png into runs/sweep-<id>/. ``step(done, total)``: federations run so far."""
    from fl_sim.federation import run_federation

    points = grid_configs(config, overrides, grid)
    cfg0 = load_config(config, overrides) if baseline else None
    sweep_id = "sweep-" + time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    sweep_dir = runs_dir / sweep_id
    sweep_dir.mkdir(parents=True)
    param = ",".join(k for k, _ in grid)
    base_row: dict[str, Any] | None = None
    n_runs = len(points) + (cfg0 is not None)
    if step:
        step(0, n_runs)
    if cfg0 is not None:  # the base config itself (the swept defenses at their defaults): the reference lines
        if progress:
            progress("[baseline] the base config, without the grid's settings")
        res0 = run_federation(cfg0, runs_dir)
        base_row = {"param": "baseline", "value": None, "run_id": res0.run_id, "status": res0.status,
                    **(run_summary(res0.run_dir) if res0.status == "finished" else {"error": res0.error})}
    rows = []
    for i, (point, cfg) in enumerate(points, 1):
        value = ",".join(point.values())
        if progress:
            progress(f"[{i}/{len(points)}] {param}={value}")
        res = run_federation(cfg, runs_dir)
        row: dict[str, Any] = {"param": param, "value": _number(value), "run_id": res.run_id, "status": res.status}
        if res.status == "finished":
            row.update(run_summary(res.run_dir))
        else:
            row["error"] = res.error
        rows.append(row)
        if progress:
            progress(f"    eps {number(row.get('epsilon'), nonfinite=None)}  "
                     f"accuracy {format_ci(row.get('accuracy'), row.get('accuracy_ci'), 3)}  "
                     f"identity gain {format_ci(row.get('identity_gain'), row.get('identity_gain_ci'), 3)}  re-id "
                     f"{format_ci(row.get('reid_top1'), row.get('reid_top1_ci'), 2)}  ({res.run_id})")
        if step:
            step(i + (base_row is not None), n_runs)
    n_users = points[0][1].users
    doc = {"sweep_id": sweep_id, "sweep_dir": str(sweep_dir), "param": param, "base_overrides": overrides,
           "chance_reid_top1": 1.0 / n_users, "rows": rows, "baseline": base_row}
    (sweep_dir / "sweep.json").write_text(json.dumps(doc, indent=2))
    (sweep_dir / "sweep.md").write_text(markdown_table(doc))
    plot_sweep(doc, sweep_dir / "sweep.png")
    doc["table"] = str(sweep_dir / "sweep.md")
    doc["plot"] = str(sweep_dir / "sweep.png")
    return doc


def _number(v: str) -> Any:
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v else f


def markdown_table(doc: dict[str, Any]) -> str:
    """The sweep as a markdown table (what docs/BENCHMARKS.md quotes): every figure with its interval."""
    from fl_sim.core.scoring import EVALUATORS

    evs = " | ".join(f"re-id top-1 ({ev})" for ev in EVALUATORS)
    lines = [f"| {doc['param']} | epsilon (delta of the run) | held-out accuracy | identity gain (lower evaluator) | "
             f"{evs} | gender acc. | strongest attack | detected | run |",
             "|---|---|---|---|" + "---|" * len(EVALUATORS) + "---|---|---|---|"]

    def line(label: str, eps: str, r: dict[str, Any]) -> str:
        flag = " ⚠ evaluators disagree" if r.get("evaluators_disagree") else ""
        reids = " | ".join(format_ci(r.get(f"{ev}_reid_top1"), r.get(f"{ev}_reid_top1_ci"), 2) for ev in EVALUATORS)
        return (f"| {label} | {eps} | {format_ci(r.get('accuracy'), r.get('accuracy_ci'), 3)} | "
                f"{format_ci(r.get('identity_gain'), r.get('identity_gain_ci'), 3)}{flag} | {reids} | "
                f"{format_ci(r.get('gender_accuracy'), r.get('gender_accuracy_ci'), 2)} | {r.get('strongest_method') or '-'} | "
                f"{'-' if r.get('detected') is None else format(r['detected'], '.0%')} | {r['run_id']} |")

    for r in doc["rows"]:
        eps = number(r.get("epsilon"), 2, nonfinite=None) if r.get("epsilon") is not None else (
            "∞ (no noise)" if r.get("dp_sgd_users") else "∞ (no DP)")
        lines.append(line(str(r["value"]), eps, r))
    b = doc.get("baseline") or {}
    if b.get("status") == "finished":
        lines.append(line("baseline (defense off)", "∞ (no DP)", b))
    return "\n".join(lines) + (f"\n\nre-identification by chance: {doc['chance_reid_top1']:.2f}; intervals: 95 % "
                               "bootstrap over users\n")


def plot_sweep(doc: dict[str, Any], path: Path) -> None:
    """Leakage (re-id under each evaluator, identity gain) and utility (accuracy) against the swept
    value, each with its 95 % interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fl_sim.core.scoring import EVALUATORS

    rows = [r for r in doc["rows"] if r.get("status") == "finished"]
    base = doc.get("baseline") if (doc.get("baseline") or {}).get("status") == "finished" else None
    numeric = all(isinstance(r["value"], (int, float)) for r in rows)
    xs = np.array([r["value"] if numeric else i for i, r in enumerate(rows)], dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))

    def errbar(ax: Any, key: str, label: str, style: str, color: str, shift: float = 0.0) -> None:
        ys = np.array([r.get(key) if r.get(key) is not None else np.nan for r in rows], dtype=float)
        lo = np.array([ys[i] - r[f"{key}_ci"][0] if r.get(f"{key}_ci") else 0 for i, r in enumerate(rows)])
        hi = np.array([r[f"{key}_ci"][1] - ys[i] if r.get(f"{key}_ci") else 0 for i, r in enumerate(rows)])
        span = (xs.max() - xs.min()) if numeric and len(xs) > 1 and xs.max() > xs.min() else 1.0
        ax.errorbar(xs + shift * span, ys, yerr=[lo, hi], fmt=style, color=color, capsize=3, label=label)

    for i, ev in enumerate(EVALUATORS):
        errbar(ax1, f"{ev}_reid_top1", f"re-id top-1 ({ev})", "s-", f"C{i}", shift=0.03 * i)
    errbar(ax1, "identity_gain", "identity gain (lower evaluator)", "o-", "C4")
    if base:
        if base.get("reid_top1") is not None:
            ax1.axhline(base["reid_top1"], color="C0", ls="-.", lw=1, label="re-id, defense off (lower evaluator)")
        ax2.axhline(base["accuracy"], color="C3", ls="-.", lw=1, label="accuracy, defense off")
        if base.get("accuracy_ci"):
            ax2.axhspan(base["accuracy_ci"][0], base["accuracy_ci"][1], color="C3", alpha=0.1)
    ax1.axhline(doc["chance_reid_top1"], color="grey", ls="--", lw=1, label="re-id by chance")
    ax1.axhline(0.0, color="black", lw=0.6)
    ax1.set_title("leakage to the curious server (strongest attack)")
    errbar(ax2, "accuracy", "held-out accuracy (last round)", "o-", "C3")
    ax2.set_title("utility")
    for r, x in zip(rows, xs):
        if r.get("epsilon") is not None and r.get("accuracy") is not None:
            ax2.annotate(f"ε={r['epsilon']:.2g}", (x, r["accuracy"]), textcoords="offset points", xytext=(2, -14),
                         fontsize=7, ha="left", rotation=-45)
    lows = [r[k] for r in rows for k in ("identity_gain",) if r.get(k) is not None]
    ax1.set_ylim(min([0.0, *lows]) - 0.05, 1.05)
    ax2.set_ylim(0, 1.05)
    spread = [x for x in xs if x > 0] if numeric else []
    for ax in (ax1, ax2):
        ax.set_xlabel(doc["param"])
        if numeric and spread and max(spread) / min(spread) > 20:
            ax.set_xscale("symlog", linthresh=min(spread))  # values spanning decades, 0 included
            ax.set_xlim(min(xs) - 0.3 * min(spread), max(xs) * 1.3)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        if not numeric:
            ax.set_xticks(xs, [str(r["value"]) for r in rows])
    fig.suptitle("error bars: 95 % bootstrap intervals over users", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
