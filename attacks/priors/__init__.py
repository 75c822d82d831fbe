"""Image priors for attacks: diffusion models (the embedded face prior, local folders, hub ids)."""

from __future__ import annotations

from pathlib import Path

from attacks.priors.diffusion import DdimStep, DiffusionPrior, PriorError

__all__ = ["DdimStep", "DiffusionPrior", "PriorError", "EMBEDDED_PRIORS", "load_prior"]

# The embedded priors ship inside the fl_sim package's assets (resolved by path so that
# `attacks` stays importable without the rest of fl-sim).
_ASSETS = Path(__file__).resolve().parents[2] / "fl_sim" / "assets"
EMBEDDED_PRIORS = {"faces32": _ASSETS / "prior-faces32"}


def load_prior(spec: str = "faces32", device: str | None = None) -> DiffusionPrior:
    """``faces32`` (embedded), a local diffusers folder, or a hub id such as google/ddpm-cifar10-32."""
    if spec in EMBEDDED_PRIORS:
        path = EMBEDDED_PRIORS[spec]
        if not path.exists():
            raise PriorError(f"embedded prior {spec!r} missing at {path}")
        return DiffusionPrior.load(path, device)
    return DiffusionPrior.load(spec, device)
