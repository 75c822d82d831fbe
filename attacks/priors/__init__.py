"""Image priors for attacks: diffusion models by registered name (locations passed in), local folder or hub id."""

from __future__ import annotations

from pathlib import Path

from attacks.priors.diffusion import DdimStep, DiffusionPrior, PriorError
from attacks.registry import Named

__all__ = ["DdimStep", "DiffusionPrior", "PriorError", "PRIORS", "EMBEDDED_PRIORS", "register_prior", "load_prior"]

# name -> a diffusers folder; the host program registers where its priors live (fl-sim: faces32).
PRIORS: Named[Path] = Named("prior")
EMBEDDED_PRIORS = PRIORS  # the former name, kept for callers that read it


def register_prior(name: str, path: Path | str, help: str = "") -> Path:
    """Make ``name`` stand for the diffusers folder at ``path``."""
    return PRIORS.add(name, Path(path), help)


def load_prior(spec: str = "faces32", device: str | None = None) -> DiffusionPrior:
    """A registered prior's name (fl-sim registers ``faces32``), a local diffusers folder, or a hub id."""
    if spec in PRIORS:
        path = PRIORS[spec]
        if not path.exists():
            raise PriorError(f"prior {spec!r} missing at {path}")
        return DiffusionPrior.load(path, device)
    return DiffusionPrior.load(spec, device)
