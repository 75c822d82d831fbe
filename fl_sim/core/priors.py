"""fl-sim's diffusion priors: the embedded ``faces32`` and ``faces64`` registered with the attacks library, ``open_prior``."""

from __future__ import annotations

from attacks.priors import PRIORS, DiffusionPrior, load_prior, register_prior
from fl_sim.core.assets import ASSET_ROOT

__all__ = ["PRIORS", "AUTO", "EMBEDDED_BY_SIZE", "open_prior", "prior_for_size", "resolve_prior"]

register_prior("faces32", ASSET_ROOT / "prior-faces32", "embedded DDPM face prior, 32x32")
register_prior("faces64", ASSET_ROOT / "prior-faces64", "embedded DDPM face prior, 64x64")

# The embedded prior trained at each image size; ``auto`` picks the one matching the images.
EMBEDDED_BY_SIZE = {32: "faces32", 64: "faces64"}
AUTO = "auto"


def prior_for_size(size: int) -> str:
    """The embedded prior whose size is nearest ``size`` (the smaller on a tie); another size is resampled."""
    return EMBEDDED_BY_SIZE[min(EMBEDDED_BY_SIZE, key=lambda s: (abs(s - size), s))]


def resolve_prior(spec: str, size: int) -> str:
    """``auto`` -> the embedded prior for ``size``; any other spec unchanged."""
    return prior_for_size(size) if spec == AUTO else spec


def open_prior(spec: str = "faces32", device: str | None = None, size: int = 32) -> DiffusionPrior:
    """A registered prior (``faces32``, ``faces64`` or a plugin's; ``auto`` for ``size``), a local diffusers folder,
    or a hub id."""
    return load_prior(resolve_prior(spec, size), device)
