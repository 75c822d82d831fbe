"""The malicious server at run time: which rounds and targets its tactic takes, what each node was sent, and what
the tactic recovered from each crafted round's aggregate."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fl_sim.core.adversary import (ModelFacts, Recovered, State, adversary_targets, make_tactic, repaired_global,
                                   round_index, tactic_round)
from fl_sim.core.config import RunConfig
from fl_sim.core.records import ClientUpdate

SOURCE = "source"  # the key, in an attack's metrics, naming the tactic whose recovered update it ran on


class Adversary:
    """One run's malicious server. Keeps only the current round's crafted states (the server's memory of what it
    sent); ``close_round`` reads the tactic's recovery from the round's aggregate and repairs the next global model."""

    def __init__(self, cfg: RunConfig, users: list[str], model: ModelFacts) -> None:
        self.cfg = cfg
        self.tactic = make_tactic(cfg.adversary.tactic, model)
        self.tactic.prepare(cfg)
        self.targets = adversary_targets(cfg, users)
        self._rnd = 0
        self._sent: dict[str, State] = {}
        self._round_targets: list[str] = []
        self._recovered: list[Recovered] = []
        self._honest: State = {}  # the round's global model, as sent to whoever the tactic left alone

    def craft(self, rnd: int, global_state: State, users: list[str]) -> dict[str, State] | None:
        """What each of the round's users gets (None: an honest round, every user gets the global model)."""
        self._rnd, self._sent, self._round_targets, self._recovered = rnd, {}, [], []
        if not tactic_round(self.cfg, rnd):
            return None
        present = [t for t in self.targets if t in users]
        if not present:
            return None  # no target trains this round: nothing to gain from crafting
        if self.tactic.one_target_per_round:
            present = [present[round_index(self.cfg, rnd) % len(present)]]
        self._sent = self.tactic.craft(rnd, global_state, users, present)
        self._honest = global_state
        self._round_targets = present
        return self._sent

    def variant(self, rnd: int, user: str) -> str:
        """The model variant ``user`` is told to build in ``rnd`` ("": the shared model)."""
        return self.tactic.variant(user, self._round_targets) if rnd == self._rnd and user in self._sent else ""

    def methods(self) -> list[str]:
        """How the tactic's recovered updates are attacked (empty: the run's attack.methods)."""
        return list(self.tactic.methods)

    def sent_in(self, rnd: int) -> dict[str, State]:
        """What each user was sent in ``rnd`` when it was crafted (empty: the global model for all)."""
        return self._sent if rnd == self._rnd else {}

    def close_round(self, rnd: int, global_state: State, examples: Mapping[str, int], aggregate: State,
                    replies: Mapping[str, State] | None = None) -> State:
        """Recover the targets' updates from ``aggregate`` (the FedAvg mean of the users in ``examples``) and return
        the next global model: the true one minus the weighted updates, each against what its user got."""
        sent = {u: self._sent[u] for u in examples}
        targets = [t for t in self._round_targets if t in examples]
        self._recovered = self.tactic.recover(rnd, sent, examples, aggregate, global_state=global_state,
                                              targets=targets, replies=replies) if targets else []
        return repaired_global(global_state, sent, examples, aggregate)

    def recovered(self, rnd: int) -> list[Recovered]:
        return self._recovered if rnd == self._rnd else []

    def note(self, rnd: int) -> dict[str, Any] | None:
        """The round's record in the store's round metrics (None: the round was honest)."""
        if rnd != self._rnd or not self._sent:
            return None
        return {"tactic": self.tactic.name, "targets": list(self._round_targets),
                "crafted": sorted(u for u, st in self._sent.items() if u not in self._round_targets
                                  and st is not self._honest),  # non-targets sent something else than the model
                "recovered": [r.user for r in self._recovered]}

    def notes(self, rec: Recovered) -> dict[str, Any]:
        """What an attack on a recovered update records with its metrics."""
        return {SOURCE: self.tactic.name, "exact_layers": len(rec.exact), "inexact_layers": list(rec.inexact),
                **self.tactic.attack_notes()}


def recovered_update(rec: Recovered, reply: ClientUpdate | None, rnd: int, cfg: RunConfig) -> ClientUpdate:
    """A recovered update as the record the curious server attacks: weights − update as the "client's" arrays, and
    the public figures (FedAvg weight, local steps, lr) of the target's reply (never its arrays)."""
    arrays = {k: (np.asarray(v, dtype=np.float64) - rec.update[k]).astype(np.asarray(v).dtype) if k in rec.update
              else np.asarray(v) for k, v in rec.weights.items()}
    if reply is None:
        return ClientUpdate(user=rec.user, round=rnd, arrays=arrays, num_examples=cfg.data.photos_per_user,
                            local_steps=1, lr=cfg.lr, loss=math.nan)
    return ClientUpdate(user=rec.user, round=rnd, arrays=arrays, num_examples=reply.num_examples,
                        local_steps=reply.local_steps, lr=reply.lr, loss=math.nan,
                        labelled_examples=reply.labelled_examples, partition_id=reply.partition_id,
                        defenses=reply.defenses)
