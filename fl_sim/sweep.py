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

from fl_sim.config import RunConfig, load_config
from fl_sim.errors import ConfigError
from fl_sim.store import RunStore


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
    """Every grid point's config, all validated before any federation runs."""
    points = []
    for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in grid]):
        point = dict(combo)
        points.append((point, load_config(config, [*overrides, *(f"{k}={v}" for k, v in point.items())])))
    return points


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Utility and leakage of one finished run, read from its store.

    Leakage is the strongest attack's: per method, the mean over its attacks of facial similarity,
    re-identification top-1 and attribute accuracy; the method with the highest mean similarity is
    reported. An aggregate attack (SecAgg+) has no target user: its similarity is to the best-matching
    user of the run, and re-identification does not apply.
    """
    st = RunStore(run_dir / "store.sqlite", readonly=True)
    try:
        rounds, updates, attacks = st.rounds(), st.updates(), st.attacks()
    finally:
        st.close()
    eps = [u["metrics"]["dp-epsilon"] for u in updates if "dp-epsilon" in u["metrics"]]
    dp_users = {u["user"] for u in updates if "dp_sgd" in (u["defenses"] or {})}
    per_method: dict[str, dict[str, Any]] = {}
    for method in sorted({a["method"] for a in attacks}):
        done = [a["metrics"] for a in attacks if a["method"] == method and a["status"] == "finished"]
        if not done:
            continue
        sim = [m.get("face_similarity", m.get("best_match_similarity")) for m in done]
        per_method[method] = {
            "attacks": len(done), "face_similarity": float(np.mean(sim)),
            "reid_top1": _mean([m.get("reid_top1") for m in done]),
            "gender_accuracy": _mean([m.get("gender_correct") for m in done]),
            "age_band_accuracy": _mean([m.get("age_band_correct") for m in done]),
            "aggregate": all(m.get("face_similarity") is None for m in done),
        }
    best = max(per_method, key=lambda m: per_method[m]["face_similarity"]) if per_method else None
    head = per_method.get(best, {}) if best else {}
    return {
        "epsilon": max(eps) if eps else None,
        "dp_sgd_users": len(dp_users - {None}),
        "accuracy": rounds[-1]["accuracy"] if rounds else None,
        "face_similarity": head.get("face_similarity"), "reid_top1": head.get("reid_top1"),
        "gender_accuracy": head.get("gender_accuracy"), "age_band_accuracy": head.get("age_band_accuracy"),
        "strongest_method": best, "methods": per_method,
    }


def _mean(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None


def run_sweep(config: Path | None, overrides: list[str], grid: list[tuple[str, list[str]]], runs_dir: Path,
              progress: Callable[[str], None] | None = None, baseline: bool = False) -> dict[str, Any]:
    """Run every grid point as its own federation (run folders beside the sweep's), then write
    sweep.json, sweep.md and sweep.png into runs/sweep-<id>/."""
    from fl_sim.federation import run_federation

    points = grid_configs(config, overrides, grid)
    cfg0 = load_config(config, overrides) if baseline else None
    sweep_id = "sweep-" + time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    sweep_dir = runs_dir / sweep_id
    sweep_dir.mkdir(parents=True)
    param = ",".join(k for k, _ in grid)
    base_row: dict[str, Any] | None = None
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
            progress(f"    eps {_fmt(row.get('epsilon'))}  accuracy {_fmt(row.get('accuracy'))}  face sim "
                     f"{_fmt(row.get('face_similarity'))}  re-id {_fmt(row.get('reid_top1'))}  ({res.run_id})")
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


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if math.isfinite(x) else str(x)
    return str(x)


def markdown_table(doc: dict[str, Any]) -> str:
    """The sweep as a markdown table (what docs/BENCHMARKS.md quotes)."""
    lines = [f"| {doc['param']} | epsilon (delta of the run) | held-out accuracy | face similarity | re-id top-1 | "
             f"gender acc. | strongest attack | run |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        eps = _fmt(r.get("epsilon"), 2) if r.get("epsilon") is not None else (
            "∞ (no noise)" if r.get("dp_sgd_users") else "∞ (no DP)")
        lines.append(f"| {r['value']} | {eps} | {_fmt(r.get('accuracy'))} | {_fmt(r.get('face_similarity'))} | "
                     f"{_fmt(r.get('reid_top1'), 2)} | {_fmt(r.get('gender_accuracy'), 2)} | "
                     f"{r.get('strongest_method') or '-'} | {r['run_id']} |")
    b = doc.get("baseline") or {}
    if b.get("status") == "finished":
        lines.append(f"| baseline (defense off) | ∞ (no DP) | {_fmt(b.get('accuracy'))} | {_fmt(b.get('face_similarity'))} | "
                     f"{_fmt(b.get('reid_top1'), 2)} | {_fmt(b.get('gender_accuracy'), 2)} | "
                     f"{b.get('strongest_method') or '-'} | {b['run_id']} |")
    return "\n".join(lines) + f"\n\nre-identification by chance: {doc['chance_reid_top1']:.2f}\n"


def plot_sweep(doc: dict[str, Any], path: Path) -> None:
    """Leakage (similarity, re-id, gender) and utility (accuracy) against the swept value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if r.get("status") == "finished"]
    base = doc.get("baseline") if (doc.get("baseline") or {}).get("status") == "finished" else None
    numeric = all(isinstance(r["value"], (int, float)) for r in rows)
    xs = [r["value"] if numeric else i for i, r in enumerate(rows)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label, style in (("face_similarity", "face similarity (strongest attack)", "o-"),
                              ("reid_top1", "re-identification top-1", "s-"),
                              ("gender_accuracy", "gender read off the reconstruction", "^-")):
        ax1.plot(xs, [r.get(key) if r.get(key) is not None else np.nan for r in rows], style, label=label)
    if base:
        ax1.axhline(base["face_similarity"], color="C0", ls="-.", lw=1, label="face similarity, defense off")
        ax2.axhline(base["accuracy"], color="C3", ls="-.", lw=1, label="accuracy, defense off")
    ax1.axhline(doc["chance_reid_top1"], color="grey", ls="--", lw=1, label="re-id by chance")
    ax1.axhline(0.5, color="C2", ls=":", lw=1, label="gender by chance")
    ax1.set_title("leakage to the curious server")
    ax2.plot(xs, [r.get("accuracy") if r.get("accuracy") is not None else np.nan for r in rows], "o-", color="C3",
             label="held-out accuracy (last round)")
    ax2.set_title("utility")
    for r, x in zip(rows, xs):
        if r.get("epsilon") is not None:
            ax2.annotate(f"ε={r['epsilon']:.2g}", (x, r["accuracy"]), textcoords="offset points", xytext=(2, -14),
                         fontsize=7, ha="left", rotation=-45)
    lows = [r[k] for r in rows for k in ("face_similarity", "reid_top1") if r.get(k) is not None]
    ax1.set_ylim(min([0.0, *lows]) - 0.05, 1.05)  # similarity of a noise image can be below 0
    ax2.set_ylim(0, 1.05)
    spread = [x for x in xs if isinstance(x, (int, float)) and x > 0]
    for ax in (ax1, ax2):
        ax.set_xlabel(doc["param"])
        if numeric and spread and max(spread) / min(spread) > 20:
            ax.set_xscale("symlog", linthresh=min(spread))  # values spanning decades, 0 included
            ax.set_xlim(min(xs) - 0.3 * min(spread), max(xs) * 1.3)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        if not numeric:
            ax.set_xticks(xs, [str(r["value"]) for r in rows])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
