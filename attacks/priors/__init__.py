"""Image priors for attacks: diffusion models by registered name (locations passed in), local folder or hub id."""

from __future__ import annotations

import json
from pathlib import Path

from attacks.priors.diffusion import DdimStep, DiffusionPrior, PriorError
from attacks.registry import Named

__all__ = ["DdimStep", "DiffusionPrior", "PriorError", "PRIORS", "EMBEDDED_PRIORS", "register_prior", "load_prior",
           "check_prior"]

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


def check_prior(spec: str) -> str:
    """What ``spec`` names, checked without loading weights: ``registered``, ``folder`` or ``hub``.

    A registered name or a local folder must hold a readable diffusers UNet config (``unet/config.json``
    or ``config.json``, a JSON object); anything path-like that does not exist is refused naming the
    path; a hub id (``owner/name``) is accepted as it stands (it is fetched, or not, when the worker loads it).
    """
    if not spec.strip():
        raise PriorError("empty prior name")
    if spec in PRIORS:
        path, kind = PRIORS[spec], "registered"
        if not path.exists():
            raise PriorError(f"prior {spec!r} missing at {path}")
    else:
        path, kind = Path(spec).expanduser(), "folder"
        if not path.exists():
            if "/" not in spec and "\\" not in spec and not spec.startswith((".", "~")):
                raise PriorError(f"unknown prior {spec!r} (registered: {', '.join(PRIORS.names()) or 'none'}; "
                                 "or a diffusers folder, or a hub id owner/name)")
            if spec.startswith((".", "/", "~")) or spec.count("/") != 1 or "\\" in spec:
                raise PriorError(f"prior path not found: {spec}")
            return "hub"
    if not path.is_dir():
        raise PriorError(f"prior is not a folder: {path}")
    unet_dir = path / "unet" if (path / "unet").is_dir() else path
    config = unet_dir / "config.json"
    if not config.is_file():
        raise PriorError(f"no diffusers UNet at {path} (expected unet/config.json or config.json)")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PriorError(f"unreadable UNet config {config}: {exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise PriorError(f"unreadable UNet config {config}: not a JSON object")
    return kind
