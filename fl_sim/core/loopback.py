"""Ray on the loopback: a private Ray, or this process's driver of a cluster on 127.0.0.1, stays on 127.0.0.1."""

from __future__ import annotations

import os
import sys

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(address: str) -> bool:
    """``host:port`` (or ``ray://host:port``) names this machine's loopback."""
    host = address.split("://")[-1].rpartition(":")[0].strip("[]")
    return host in LOOPBACK_HOSTS


def ray_on_loopback(address: str = "") -> bool:
    """Make this process's Ray use 127.0.0.1 only: the one it starts (GCS, raylet, agents, workers) or, with a
    loopback ``address``, its driver of that cluster (which otherwise says it is at the machine's address and
    finds no node of the cluster there). Returns whether it did.

    Ray replaces a node address of 127.0.0.1 by the machine's address unless its "cluster" mode is off
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ray is imported, hence also the constant); with the
    loopback node address, Ray's gRPC servers listen on 127.0.0.1 instead of 0.0.0.0. An address elsewhere, or
    ``RAY_ADDRESS`` set with no address given: the user attaches to a cluster on purpose, and nothing is changed.
    """
    if address and not is_loopback(address) or not address and os.environ.get("RAY_ADDRESS"):
        return False
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        setattr(constants, "ENABLE_RAY_CLUSTER", False)  # noqa: B010 - a module constant mypy does not see
    return True
