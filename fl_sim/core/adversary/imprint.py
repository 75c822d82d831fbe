"""Imprint ("Robbing the Fed", Fowl et al. 2022): the server ships its targets a model variant, an imprint block in
front of the shared model, whose gradient holds the target's photos one per bin (attacks/imprint.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from attacks.imprint import bin_thresholds, imprint_parameters, measurement_vector, spread_direction
from fl_sim.core.adversary.base import AdversaryRunView, Recovered, State, Tactic, register_tactic
from fl_sim.core.errors import ConfigError

PREFIX = "imprint."  # every key of the block in the state a target gets (fl_sim.core.models.with_variant)
WEIGHT, BIAS, READOUT = "imprint.imprint.weight", "imprint.imprint.bias", "imprint.readout"
PUBLIC = "synthfaces:prior"  # public faces the server may know (the prior's identities, disjoint from users)
SINGLE_STEP_SCALE, MULTI_STEP_SCALE = 0.3, 0.03  # attacks/imprint.py: s/gain = 10 (FedSGD), 1 (FedAvg)


def variant_spec(bins: int) -> str:
    """The ``model-variant`` a target is told to build: ``imprint:<bins>`` (the architecture, nothing secret)."""
    return f"imprint:{bins}"


@register_tactic
class Imprint(Tactic):
    """Targets get the global model plus an imprint block (``imprint.*`` keys); the others the global model."""

    name = "imprint"
    help = "imprint block (Fowl et al. 2022): single photos read from the target's own update"
    methods = ("imprint",)

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.shape: tuple[int, int, int] = (3, 32, 32)
        self.bins = 128
        self.scale = MULTI_STEP_SCALE
        self.gain = 0.03
        self.public = 256
        self.seed = 0
        self.clean_noise = 0.0
        self.measurement = "spread"
        self._block: State | None = None

    @classmethod
    def validate(cls, run: AdversaryRunView) -> None:
        from fl_sim.core.defenses import aggregate_only

        if aggregate_only(run):  # type: ignore[arg-type]
            raise ConfigError("config key 'adversary.tactic': imprint reads the target's own reply, but under "
                              "defenses.secagg the server sees only the aggregate (use inconsistency there)")
        bins = run.adversary.imprint.bins
        if bins == 1:
            raise ConfigError("config key 'adversary.imprint.bins': an imprint needs at least 2 bins (0: automatic)")

    def prepare(self, run: Any) -> None:
        s = int(run.data.image_size)
        self.shape = (3, s, s)
        conf = run.adversary.imprint
        self.bins = int(conf.bins) or 4 * int(run.data.photos_per_user)
        self.scale = float(conf.scale) or (SINGLE_STEP_SCALE if run.protocol == "fedsgd" else MULTI_STEP_SCALE)
        self.gain = float(conf.gain)
        self.public = int(conf.public_identities)
        self.seed = int(run.seed)
        self.clean_noise = float(conf.clean_noise)
        self.measurement = str(conf.measurement)

    def attack_notes(self) -> dict[str, Any]:
        return {"clean_noise": self.clean_noise} if self.clean_noise else {}

    def block(self) -> State:
        """The block's arrays (built once per run): thresholds from public faces, never the users' photos."""
        if self._block is None:
            from fl_sim.core.data import open_dataset

            ds = open_dataset(PUBLIC)
            people = ds.users()[:self.public]
            groups = [ds.photos(p.user, self.shape[1]) for p in people]
            faces = torch.cat(groups)
            m = spread_direction(groups) if self.measurement == "spread" else \
                measurement_vector(self.shape, self.measurement, self.seed)
            c = bin_thresholds(faces, m, self.bins)
            w, b = imprint_parameters(self.shape, self.bins, c, m, gain=self.gain)
            self._block = {WEIGHT: w.numpy(), BIAS: b.numpy(),
                           READOUT: np.full(math.prod(self.shape), self.scale, dtype=np.float32)}
        return self._block

    def variant(self, user: str, targets: list[str]) -> str:
        return variant_spec(self.bins) if user in targets else ""

    def craft(self, rnd: int, global_state: State, users: list[str], targets: list[str]) -> dict[str, State]:
        imprinted = {**self.block(), **global_state}
        return {u: imprinted if u in targets else global_state for u in users}

    def recover(self, rnd: int, sent: Mapping[str, State], examples: Mapping[str, int], aggregate: State, *,
                global_state: State, targets: list[str],
                replies: Mapping[str, State] | None = None) -> list[Recovered]:
        # The target's own reply (the server sees it: no secure aggregation), its block's update only.
        if replies is None:
            return []
        out = []
        for t in targets:
            reply = replies.get(t)
            if reply is None or WEIGHT not in reply or BIAS not in reply:
                continue
            update = {k: np.asarray(sent[t][k], dtype=np.float64) - np.asarray(reply[k], dtype=np.float64)
                      for k in (WEIGHT, BIAS)}
            out.append(Recovered(t, update, dict(sent[t]), (WEIGHT, BIAS)))
        return out
