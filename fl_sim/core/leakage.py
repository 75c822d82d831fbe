"""Leakage figures over many attacks: per evaluator, with intervals, agreement and the headline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fl_sim.core.names import EVALUATORS
from fl_sim.core.stats import intervals_overlap, mean_ci

# Per-attack metrics summarised under each evaluator (keys ``{evaluator}_{metric}`` in a score row).
METRICS = ("reid_top1", "reid_top5", "reid_rank", "identity_gain", "face_similarity")
PROPORTIONS = ("reid_top1", "reid_top5")  # success rates: exact intervals where all units hit (or miss)


def per_user(rows: Sequence[dict[str, Any]], units: Sequence[str], key: str) -> dict[str, float]:
    """user -> mean of ``key`` over that user's rows (e.g. over seeds); users without a value left out."""
    acc: dict[str, list[float]] = {}
    for r, u in zip(rows, units, strict=True):
        v = r.get(key)
        if v is not None:
            acc.setdefault(u, []).append(float(v))
    return {u: sum(v) / len(v) for u, v in acc.items()}


def summarize(rows: Sequence[dict[str, Any]], units: Sequence[str],
              evaluators: Sequence[str] = EVALUATORS) -> dict[str, Any]:
    """Mean and 95 % bootstrap interval over users of every metric, under each evaluator; then the
    headline (the lower of the evaluators' figures) and whether they disagree beyond their intervals.
    """
    out: dict[str, Any] = {"users": len(set(units)), "attacks": len(rows), "evaluators": {}}
    for ev in evaluators:
        d: dict[str, Any] = {}
        for key in METRICS:
            vals = [r.get(f"{ev}_{key}") for r in rows]
            if all(v is None for v in vals):
                d[key], d[f"{key}_ci"] = None, None
                continue
            mean, ci = mean_ci(vals, units, proportion=key in PROPORTIONS)
            d[key], d[f"{key}_ci"] = mean, [ci[0], ci[1]]
        out["evaluators"][ev] = d
    for key in ("reid_top1", "identity_gain"):
        figs = {ev: out["evaluators"][ev] for ev in evaluators if out["evaluators"][ev].get(key) is not None}
        if not figs:
            out[key], out[f"{key}_ci"], out[f"{key}_evaluator"] = None, None, None
            continue
        low = min(figs, key=lambda ev: figs[ev][key])
        out[key], out[f"{key}_ci"], out[f"{key}_evaluator"] = figs[low][key], figs[low][f"{key}_ci"], low
        cis = [f[f"{key}_ci"] for f in figs.values()]
        out[f"{key}_disagree"] = any(not intervals_overlap(a, b) for i, a in enumerate(cis) for b in cis[i + 1:])
    # Judged on re-identification: it is on one scale under every evaluator; their similarities are not.
    out["evaluators_disagree"] = bool(out.get("reid_top1_disagree"))
    return out
