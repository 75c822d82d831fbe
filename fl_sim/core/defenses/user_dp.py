"""User-level DP with Flower's built-ins: client clipping or local noise mods, or a server-side DP strategy wrapper."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fl_sim.core.defenses.base import DEFENSES, EXACT_UPDATE, Defense, Record, RunView, StrategyWrapper
from fl_sim.core.fields import _f

# What each user-level DP mode lets a curious server see of one user's update (STACK.md: Flower's
# server-side wrappers clip each reply and hand it to the wrapped strategy before central noise is added
# to the aggregate; client-side fixed clipping likewise noises only the aggregate).
USER_DP_VISIBILITY = {
    "off": EXACT_UPDATE,
    "client-fixed": "the server sees each user's clipped update without noise (noise is added to the aggregate): "
                    "does not hide the user from the server",
    "server-fixed": "the server clips each update itself and sees it without noise: does not hide the user",
    "server-adaptive": "the server clips each update itself and sees it without noise: does not hide the user",
    "local": "each user clips and noises their own update before sending (LocalDpMod): hides the user to the "
             "extent of its epsilon",
}


@dataclass
class UserDpConfig:
    """User-level DP with Flower's built-ins (whole updates clipped, noise on the server or the client)."""

    mode: str = _f("off", "off | client-fixed (clients clip, server noises the aggregate) | server-fixed | "
                          "server-adaptive (server clips, then noises the aggregate) | local (LocalDpMod: clients "
                          "clip and noise their own update)",
                   choices=tuple(USER_DP_VISIBILITY))
    noise_multiplier: float = _f(0.1, "central modes: noise std / clipping norm on the aggregate", min=0.0)
    clipping_norm: float = _f(1.0, "update clipping norm (the initial one for server-adaptive)", min_exclusive=0.0)
    local_epsilon: float = _f(10.0, "local: epsilon of LocalDpMod's Gaussian mechanism", min_exclusive=0.0)
    local_delta: float = _f(1e-5, "local: delta of LocalDpMod's Gaussian mechanism", min_exclusive=0.0, max=0.1)


class UserDp(Defense[UserDpConfig]):
    """Every user's whole update clipped (and noised: on the server's aggregate, or locally by the client)."""

    name = "user_dp"
    help = "user-level DP (Flower)"
    config_type = UserDpConfig
    section_rank, record_rank = 1, 2

    def active(self, section: UserDpConfig) -> bool:
        return section.mode != "off"

    def record(self, section: UserDpConfig, run: RunView) -> Record:
        if section.mode == "local":
            return {"mode": "local", "clipping_norm": section.clipping_norm, "epsilon": section.local_epsilon,
                    "delta": section.local_delta}
        return {"mode": section.mode, "clipping_norm": section.clipping_norm,
                "noise_multiplier": section.noise_multiplier}

    def describe(self, rec: Record) -> str:
        return f"user_dp {rec['mode']}"

    def visibility(self, rec: Record) -> str:
        return USER_DP_VISIBILITY[rec["mode"]]

    def client_mods(self, section: UserDpConfig) -> list[Any]:
        if section.mode == "client-fixed":
            from flwr.clientapp.mod import fixedclipping_mod

            return [fixedclipping_mod]
        if section.mode == "local":
            from flwr.clientapp.mod import LocalDpMod

            return [LocalDpMod(section.clipping_norm, section.clipping_norm, section.local_epsilon,
                               section.local_delta)]
        return []

    def server_wrapper(self, section: UserDpConfig, run: RunView) -> StrategyWrapper | None:
        """Flower's user-level DP strategy wrapper for the mode (None: off or client-only)."""
        n = run.clients_in_round()
        if section.mode == "server-fixed":
            from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping as Fixed

            return lambda s: Fixed(s, section.noise_multiplier, section.clipping_norm, n)
        if section.mode == "client-fixed":
            from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping as ClientFixed

            return lambda s: ClientFixed(s, section.noise_multiplier, section.clipping_norm, n)
        if section.mode == "server-adaptive":
            from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping as Adaptive

            return lambda s: Adaptive(s, section.noise_multiplier, n, initial_clipping_norm=section.clipping_norm)
        return None


USER_DP = UserDp()
DEFENSES.add(USER_DP.name, USER_DP, USER_DP.help)
