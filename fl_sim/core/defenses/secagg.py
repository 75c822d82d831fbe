"""Secure aggregation (Flower's SecAgg+): the server sees only each round's aggregate, never one user's update."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fl_sim.core.defenses.base import DEFENSES, Defense, Record, RunView
from fl_sim.core.defenses.user_dp import USER_DP
from fl_sim.core.errors import ConfigError
from fl_sim.core.fields import _f


@dataclass
class SecAggConfig:
    """Secure aggregation (Flower's SecAgg+ workflow): the server sees only each round's aggregate."""

    enabled: bool = _f(False, "run rounds through SecAgg+")
    num_shares: int = _f(0, "secret shares per client (0: every client in the round)", min=0)
    reconstruction_threshold: int = _f(3, "shares needed to unmask a client's secret", min=2)


class SecAgg(Defense[SecAggConfig]):
    """Clients mask their replies (secaggplus_mod); the server's legacy workflow unmasks only the aggregate."""

    name = "secagg"
    help = "secure aggregation"
    config_type = SecAggConfig
    section_rank, record_rank = 3, 3
    hides_update = True
    aggregate_only = True
    outermost_mods = True  # it masks what the handler (and any other mod) returns

    def validate(self, section: SecAggConfig, run: RunView, sections: Mapping[str, Any]) -> None:
        if not section.enabled:
            return
        n = run.clients_in_round()
        s = section
        if n < s.reconstruction_threshold:
            raise ConfigError(f"config key 'defenses.secagg.reconstruction_threshold': {s.reconstruction_threshold} "
                              f"shares needed but only {n} clients per round")
        if s.num_shares and not s.reconstruction_threshold < s.num_shares <= n:
            raise ConfigError(f"config key 'defenses.secagg.num_shares': must be in "
                              f"({s.reconstruction_threshold}, {n}] (threshold, clients per round), got {s.num_shares}")
        if not s.num_shares and n <= s.reconstruction_threshold:
            raise ConfigError(f"config key 'defenses.secagg.reconstruction_threshold': must be below the {n} "
                              f"clients per round (SecAgg+ shares each secret among them), got "
                              f"{s.reconstruction_threshold}")
        if USER_DP.active(sections[USER_DP.name]):
            raise ConfigError("config key 'defenses.user_dp.mode': Flower's DP wrappers and SecAgg+ run on different "
                              "server APIs in Flower 1.41; use one of them")
        if run.utility_eval != "harness":
            raise ConfigError("config key 'utility_eval': SecAgg+ runs use the harness evaluation")

    def record(self, section: SecAggConfig, run: RunView) -> Record:
        return {"num_shares": section.num_shares or run.clients_in_round(),
                "reconstruction_threshold": section.reconstruction_threshold}

    def describe(self, rec: Record) -> str:
        return "secagg+"

    def visibility(self, rec: Record) -> str:
        return "SecAgg+: the server sees only the round's aggregate, never this user's update"

    def client_mods(self, section: SecAggConfig) -> list[Any]:
        from flwr.client.mod import secaggplus_mod

        return [secaggplus_mod]

    def fit_workflow(self, section: SecAggConfig, run: RunView) -> Any:
        from flwr.server.workflow import SecAggPlusWorkflow

        shares: int | float = section.num_shares if section.num_shares else 1.0  # 1.0: every client in the round
        return SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=section.reconstruction_threshold)


SECAGG = SecAgg()
DEFENSES.add(SECAGG.name, SECAGG, SECAGG.help)
