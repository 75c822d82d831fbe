"""The actively malicious server: a registry of tactics (one file each behind `base.Tactic`) that craft what each
user receives and recover, from what comes back, the updates the curious server's attacks run on."""

from __future__ import annotations

from fl_sim.core.adversary.base import (TACTICS, AdversaryConfig, ImprintConfig, AdversaryRunView, ModelFacts, Recovered, State,
                                        Tactic, adversary_targets, aggregate_update, fedavg_weights, make_tactic,
                                        malicious, register_tactic, repaired_global, round_index, tactic_round,
                                        validate_adversary)
from fl_sim.core.adversary.imprint import Imprint
from fl_sim.core.adversary.inconsistency import DEAD_RELU, Inconsistency

__all__ = ["DEAD_RELU", "TACTICS", "AdversaryConfig", "AdversaryRunView", "Inconsistency", "ModelFacts", "Recovered",
           "State", "Tactic", "adversary_targets", "aggregate_update", "fedavg_weights", "make_tactic", "malicious",
           "register_tactic", "repaired_global", "round_index", "tactic_round", "validate_adversary"]
