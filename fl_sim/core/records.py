"""Typed records that cross client -> server -> attack worker -> store: a client's update and an attack's result."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # torch is not imported to read a run (fl-sim runs / inspect): only its types are named here
    import torch

Number = Union[int, float]
# A reply's weights: torch tensors where the client made them, numpy arrays where the server read them.
Arrays = Union[Mapping[str, "torch.Tensor"], Mapping[str, npt.NDArray[Any]]]

# The wire and store keys (Flower metric names; the store's updates.metrics JSON repeats them).
NUM_EXAMPLES, LOCAL_STEPS, LR, LOSS = "num-examples", "local-steps", "lr", "loss"
LABELLED_EXAMPLES, PARTITION_ID, AGGREGATE_SIZE = "labelled-examples", "partition-id", "aggregate_size"
PRIVACY_PREFIX = "dp-"


@dataclass(frozen=True)
class LocalTrainResult:
    """What a client reports besides its new weights."""

    loss: float
    local_steps: int
    num_examples: int


@dataclass(frozen=True)
class PrivacyFigures:
    """A DP-SGD client's privacy figures for one reply; ``epsilon`` is None when z = 0 (no guarantee)."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    sample_rate: float
    steps: int
    epsilon: float | None = None

    def to_metrics(self) -> dict[str, Number]:
        """The ``dp-*`` keys, in the order the reply (and the store) lists them."""
        out: dict[str, Number] = {"dp-noise-multiplier": float(self.noise_multiplier),
                                  "dp-max-grad-norm": float(self.max_grad_norm), "dp-delta": float(self.delta),
                                  "dp-sample-rate": float(self.sample_rate), "dp-steps": int(self.steps)}
        if self.epsilon is not None and math.isfinite(self.epsilon):
            out["dp-epsilon"] = self.epsilon
        return out

    @classmethod
    def from_metrics(cls, values: Mapping[str, Any]) -> PrivacyFigures | None:
        """The figures in ``values`` (None when it holds no ``dp-*`` key)."""
        if "dp-noise-multiplier" not in values:
            return None
        eps = values.get("dp-epsilon")
        return cls(float(values["dp-noise-multiplier"]), float(values["dp-max-grad-norm"]), float(values["dp-delta"]),
                   float(values["dp-sample-rate"]), int(values["dp-steps"]), None if eps is None else float(eps))


@dataclass(frozen=True)
class ClientUpdate:
    """One reply the server received: a user's new weights and what their training says about itself.

    ``user`` is None and ``aggregate_size`` N for an aggregate of N users (SecAgg+); ``defenses``
    names the defenses the update went through (not on the wire: each side knows them from the run).
    """

    user: str | None
    round: int
    arrays: Arrays
    num_examples: int
    local_steps: int
    lr: float
    loss: float
    labelled_examples: int | None = None  # photos that carried a label; 0: the update holds nothing
    partition_id: int | None = None
    defenses: tuple[str, ...] = ()
    privacy: PrivacyFigures | None = None
    aggregate_size: int | None = None  # None: one user's reply
    checks: Mapping[str, Mapping[str, Any]] | None = None  # per defense: what its check of the received model found

    def metrics(self) -> dict[str, Number]:
        """The reply's metrics: the same keys in every reply (Flower's FedAvg aggregates only those)."""
        out: dict[str, Number] = {}
        if self.aggregate_size is not None:
            out[AGGREGATE_SIZE] = self.aggregate_size
        out.update({NUM_EXAMPLES: self.num_examples, LOCAL_STEPS: self.local_steps, LR: self.lr, LOSS: self.loss})
        if self.labelled_examples is not None:
            out[LABELLED_EXAMPLES] = self.labelled_examples
        if self.partition_id is not None:
            out[PARTITION_ID] = self.partition_id
        return out

    def privacy_metrics(self) -> dict[str, Number]:
        """The ``dp-*`` figures (empty without DP-SGD): they travel apart, as defenses differ per user."""
        return self.privacy.to_metrics() if self.privacy is not None else {}

    def stored_metrics(self) -> dict[str, Number]:
        """Everything the reply said, as the store's ``updates.metrics`` keeps it (the checks apart: ``checks``)."""
        return {**self.metrics(), **self.privacy_metrics()}

    @property
    def refused(self) -> bool:
        """Whether the client refused to train on what it received (its reply is what it was sent)."""
        return any(bool(rec.get("refused")) for rec in (self.checks or {}).values())

    def no_signal(self, global_state: Mapping[str, Any]) -> str | None:
        """Why this update carries nothing to attack (None if it does): its training saw no labelled
        example (the client says so), or it is exactly the global model."""
        if self.labelled_examples == 0:
            return "no signal: the user's training saw no labelled example (every label unknown)"
        if all(np.array_equal(np.asarray(_numpy(self.arrays[k])), np.asarray(global_state[k])) for k in global_state):
            return "no signal: the update is exactly zero (norm 0)"
        return None

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any], *, user: str | None, round: int, arrays: Arrays,
                     privacy: Mapping[str, Any] | None = None, defenses: tuple[str, ...] = (),
                     num_examples: int = 0, lr: float = 0.0,
                     checks: Mapping[str, Mapping[str, Any]] | None = None) -> ClientUpdate:
        """A record from metric names (a reply's, or a hand-made dict); absent keys take the defaults given."""
        agg = metrics.get(AGGREGATE_SIZE)
        lab, pid = metrics.get(LABELLED_EXAMPLES), metrics.get(PARTITION_ID)
        return cls(user=user, round=round, arrays=arrays,
                   num_examples=int(metrics.get(NUM_EXAMPLES, num_examples)),
                   local_steps=int(metrics.get(LOCAL_STEPS, 1)), lr=float(metrics.get(LR, lr)),
                   loss=float(metrics.get(LOSS, math.nan)),
                   labelled_examples=None if lab is None else int(lab), partition_id=None if pid is None else int(pid),
                   defenses=defenses, privacy=PrivacyFigures.from_metrics(privacy or {}),
                   aggregate_size=None if agg is None else int(agg), checks=checks or None)


def _numpy(v: Any) -> Any:
    return v.numpy() if not isinstance(v, np.ndarray) and hasattr(v, "numpy") else v


@dataclass(frozen=True)
class AttackResult:
    """One attack's outcome on one target: finished with metrics and an image, or failed with an error."""

    target: str | None  # the attacked user; None for an aggregate
    method: str
    status: str
    metrics: dict[str, Any] | None = None
    image: str | None = None  # relative to the run folder
    error: str | None = None
    trace: str | None = field(default=None, compare=False)  # a failure's traceback (not stored)
