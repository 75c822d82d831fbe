"""Privacy accounting for the audit: ε(μ) at δ (exact GDP or Opacus RDP), the ReRo bound and its baseline κ."""

from __future__ import annotations

import math

from fl_sim.core.errors import FlSimError

DELTA = 1e-5


def gdp_delta(eps: float, mu: float) -> float:
    """δ(ε) of μ-GDP (Dong, Roth, Su 2019): Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), in log space for large ε."""
    from scipy.stats import norm

    a = float(norm.cdf(-eps / mu + mu / 2))
    b = math.exp(eps + float(norm.logcdf(-eps / mu - mu / 2)))
    return a - b


def eps_for_mu(mu: float, delta: float = DELTA, *, steps: int = 1, sample_rate: float = 1.0) -> float:
    """ε at δ for noise multiplier z = 1/μ.

    steps = 1 and sample_rate = 1: one release of the Gaussian mechanism, the exact GDP curve solved
    for ε. Otherwise Opacus's RDP accountant for ``steps`` Poisson-subsampled steps.
    """
    if mu <= 0:
        raise FlSimError(f"--mu: expected positive values, got {mu}")
    if steps == 1 and sample_rate == 1.0:
        from scipy.optimize import brentq

        if gdp_delta(0.0, mu) <= delta:
            return 0.0
        hi = 1.0
        while gdp_delta(hi, mu) > delta:
            hi *= 2
        return float(brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, hi, xtol=1e-10))
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(1.0 / mu, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


def rero_bound(mu: float, kappa: float) -> float:
    """Reconstruction-robustness bound for μ-GDP: success ≤ Φ(μ + Φ⁻¹(κ)); κ at μ = 0."""
    from scipy.stats import norm

    if kappa <= 0.0:
        return 0.0
    if kappa >= 1.0:
        return 1.0
    return float(norm.cdf(mu + norm.ppf(kappa)))


def baseline_kappa(successes: int, trials: int) -> tuple[float, str]:
    """κ = successes/trials; with no success, the one-sided 95% upper limit 1 − 0.05^(1/n), so the
    bound does not collapse to 0 on a finite sample (a conservative choice: it raises the bound)."""
    if trials <= 0:
        raise FlSimError("kappa: no (prior sample, target) pairs to estimate it from")
    if successes == 0:
        return 1.0 - 0.05 ** (1.0 / trials), f"0/{trials} pairs succeeded: 95% upper limit"
    return successes / trials, f"{successes}/{trials} (prior sample, target) pairs"
