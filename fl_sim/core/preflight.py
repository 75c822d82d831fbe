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
    be written on one machine for another. Actors placed on a Ray cluster (``simulation.ray_address``
    for the clients and the worker, ``attack.ray_address`` for the worker) are the cluster's to place:
    this machine's CPUs and GPUs say nothing about them.
    """
    import os

    a = attack
    local_clients = not sim.ray_address
    local_worker = a.enabled and not sim.ray_address and not a.ray_address
    cpus = sim.ray_num_cpus or os.cpu_count() or 1
    if local_clients and sim.client_cpus > cpus:
        raise ConfigError(f"config key 'simulation.client_cpus': {sim.client_cpus} CPUs per client, "
                          f"but Ray has {cpus} (simulation.ray_num_cpus)")
    if local_worker and a.worker_cpus + sim.client_cpus > cpus:
        raise ConfigError(f"config key 'attack.worker_cpus': {a.worker_cpus} for the attack worker plus "
                          f"{sim.client_cpus} per client exceed the {cpus} CPUs Ray has")
    gpus_asked = [(k, v) for k, v in (("simulation.client_gpus", sim.client_gpus if local_clients else 0.0),
                                     ("attack.worker_gpus", a.worker_gpus if local_worker else 0.0)) if v > 0]
    if gpus_asked:
        import torch

        have = torch.cuda.device_count()
        for key, v in gpus_asked:
            if have == 0 or v > have:
                raise ConfigError(f"config key '{key}': {v} GPU(s) asked, this machine has {have} "
                                  "(a GPU on a Ray cluster: set simulation.ray_address or attack.ray_address)")


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


def check_ray_address(address: str, key: str, timeout: float = 5.0) -> None:
    """A Ray address (``host:port`` of a GCS, ``ray://host:port``) answers a TCP connection within ``timeout`` s.

    ``ray.init`` itself retries an unreachable GCS for minutes; this says so at once, naming ``key``.
    ``auto`` (the cluster this machine runs) is left to ``ray.init``, which refuses it at once when none runs.
    """
    import socket

    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"config key '{key}': {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"config key '{key}': no Ray at {address} ({exc.strerror or exc})") from None
