"""Pre-flight checks that need more than a key's own bounds: a model that builds, actors that fit, a prior that opens.

They take config sections (``RunConfig.model``, ``.simulation``, ``.attack``), never the config module itself.
"""

from __future__ import annotations

from typing import Any

from fl_sim.core.errors import ConfigError


def check_model(model: Any, image_size: int, seed: int) -> None:
    """A built-in model builds with this width, norm and image size (on the meta device: no memory, no weights).

    Plugins' models are left to their own checks: their constructors may do more than lay out layers.
    """
    import torch

    from fl_sim.core.models import MODELS, build_model, task_heads

    if next((e.origin for e in MODELS if e.name == model.name), None) != "builtin":
        return
    try:
        with torch.device("meta"):
            build_model(model.name, task_heads("identity", ["a", "b"]), image_size, model.width, seed, model.norm)
    except (ValueError, RuntimeError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
        raise ConfigError(f"config key 'model.width': model {model.name} (norm {model.norm}, image_size "
                          f"{image_size}) cannot be built with width {model.width}: {first}") from None


def check_resources(sim: Any, attack: Any) -> None:
    """What the Ray actors ask for exists on this machine: an unschedulable actor would wait forever.

    Checked when a run is about to start (``prepare_users``), not by ``load_config``: a config may
    be written on one machine for another.
    """
    import os

    a = attack
    cpus = sim.ray_num_cpus or os.cpu_count() or 1
    if sim.client_cpus > cpus:
        raise ConfigError(f"config key 'simulation.client_cpus': {sim.client_cpus} CPUs per client, "
                          f"but Ray has {cpus} (simulation.ray_num_cpus)")
    if a.enabled and a.worker_cpus + sim.client_cpus > cpus:
        raise ConfigError(f"config key 'attack.worker_cpus': {a.worker_cpus} for the attack worker plus "
                          f"{sim.client_cpus} per client exceed the {cpus} CPUs Ray has")
    gpus_asked = [(k, v) for k, v in (("simulation.client_gpus", sim.client_gpus),
                                     ("attack.worker_gpus", a.worker_gpus if a.enabled else 0.0)) if v > 0]
    if gpus_asked:
        import torch

        have = torch.cuda.device_count()
        for key, v in gpus_asked:
            if have == 0 or v > have:
                raise ConfigError(f"config key '{key}': {v} GPU(s) asked, this machine has {have}")


def check_attack_prior(attack: Any) -> None:
    """``attack.prior`` names a prior that can be opened (its config read, not its weights), when an attack uses it."""
    if not attack.enabled or "diffusion" not in attack.methods:
        return
    from attacks.priors import PriorError, check_prior
    from fl_sim.core import priors  # noqa: F401 - registers the embedded prior

    try:
        check_prior(attack.prior)
    except PriorError as exc:
        raise ConfigError(f"config key 'attack.prior': {exc}") from None
