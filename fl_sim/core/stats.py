"""Intervals for every leakage and utility figure: bootstrap over users (seeds pooled per user)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 4000


def per_unit_means(values: Sequence[float | None], units: Sequence[str]) -> np.ndarray:
    """One value per unit (user): the mean of that unit's values (e.g. over seeds); None skipped."""
    acc: dict[str, list[float]] = {}
    for v, u in zip(values, units, strict=True):
        if v is not None and np.isfinite(v):
            acc.setdefault(u, []).append(float(v))
    return np.array([np.mean(acc[u]) for u in sorted(acc)], dtype=np.float64)


def bootstrap_ci(unit_values: Sequence[float] | np.ndarray, *, level: float = LEVEL, n_boot: int = N_BOOT,
                 seed: int = 0, proportion: bool = False) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over units (resampled with replacement).

    One value per unit: pooling seeds per user first makes this a cluster bootstrap over users, so
    two seeds of the same 20 users do not pass for 40 independent users. Fewer than two units:
    the interval is the value itself (nothing to resample), or NaN when there is none.

    ``proportion``: the values are success rates in [0, 1]. When every unit sits at 0 or every
    unit at 1 the bootstrap has nothing to resample and would print a zero-width interval; the
    exact (Clopper-Pearson) binomial interval for n units is given instead — 20 of 20 users
    re-identified is [0.83, 1.00], not [1.00, 1.00].
    """
    x = np.asarray(unit_values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return (float("nan"), float("nan"))
    if proportion and np.all(x == x[0]) and x[0] in (0.0, 1.0):
        edge = ((1 - level) / 2) ** (1 / len(x))  # P(all n succeed) = p^n = alpha/2 at the bound
        return (float(edge), 1.0) if x[0] == 1.0 else (0.0, float(1 - edge))
    if len(x) == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def mean_ci(values: Sequence[float | None], units: Sequence[str], *, proportion: bool = False,
            **kw: float) -> tuple[float, tuple[float, float]]:
    """(mean over units, bootstrap interval) of per-observation values grouped by unit."""
    per = per_unit_means(values, units)
    return (float(per.mean()) if len(per) else float("nan"),
            bootstrap_ci(per, proportion=proportion, **kw))  # type: ignore[arg-type]


def paired_difference(a: dict[str, float], b: dict[str, float], **kw: float) -> dict[str, object]:
    """Mean of a[u] - b[u] over the units both have, its interval, and whether that excludes 0."""
    common = sorted(set(a) & set(b))
    d = np.array([a[u] - b[u] for u in common], dtype=np.float64)
    lo, hi = bootstrap_ci(d, **kw)  # type: ignore[arg-type]
    return {"difference": float(d.mean()) if len(d) else float("nan"), "ci": [lo, hi], "units": len(common),
            "significant": bool(len(d) > 1 and (lo > 0 or hi < 0))}


def intervals_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two [low, high] intervals share a point."""
    return not (a[1] < b[0] or b[1] < a[0])
