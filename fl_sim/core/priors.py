"""fl-sim's diffusion priors: the embedded ``faces32`` registered with the attacks library, and ``open_prior``."""

from __future__ import annotations

from attacks.priors import PRIORS, DiffusionPrior, load_prior, register_prior
from fl_sim.core.assets import ASSET_ROOT

__all__ = ["PRIORS", "open_prior"]

register_prior("faces32", ASSET_ROOT / "prior-faces32", "embedded DDPM face prior, 32x32")


def open_prior(spec: str = "faces32", device: str | None = None) -> DiffusionPrior:
    """A registered prior (``faces32`` or a plugin's), a local diffusers folder, or a hub id."""
    return load_prior(spec, device)
