"""`Observation`: what a curious server holds for one user (or one aggregate) in one round."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Observation:
    """A client's update and the public facts around it — never the client's data.

    ``update`` is θ_r − θ_client (what the client's reply differs from the global model by);
    for FedSGD it is lr·gradient, for FedAvg the sum of K local SGD steps.
    ``heads`` are the classifier's (name, classes) slices and ``loss_fn(logits, labels)`` the
    task's training loss: the server knows the architecture and the task.
    """

    model: nn.Module
    global_params: dict[str, torch.Tensor]
    update: dict[str, torch.Tensor]
    protocol: str
    num_examples: int
    lr: float
    loss_fn: LossFn
    heads: tuple[tuple[str, int], ...]
    image_shape: tuple[int, int, int]
    local_steps: int = 1
    local_epochs: int = 1
    local_batch_size: int = 0
    aggregate_size: int = 1
    round: int = 0
    user: str | None = None
    meta: dict[str, object] = field(default_factory=dict)
    # Parameters whose update is not (only) this user's: a malicious server's recovery left other users mixed in
    # there (model inconsistency: the classifier's bias). Attacks neither match nor read labels from them.
    unknown: tuple[str, ...] = ()

    def gradient(self) -> dict[str, torch.Tensor]:
        """FedSGD: the exact mean gradient. FedAvg: the pseudo-gradient Δ / (η·K). Without the ``unknown``
        parameters."""
        scale = 1.0 / (self.lr * max(self.local_steps, 1))
        return {k: v * scale for k, v in self.update.items() if k not in self.unknown}

    def classifier_weight(self) -> str:
        """Name of the last layer's weight matrix: the last 2-d parameter with one row per class."""
        n = sum(c for _, c in self.heads)
        names = [k for k, v in self.global_params.items() if v.dim() == 2 and v.shape[0] == n]
        if not names:
            raise ValueError(f"no classifier weight with {n} rows among the model's parameters")
        return names[-1]

    def classifier_bias(self) -> str:
        """Name of the last layer's bias: the last 1-d parameter with one entry per class."""
        n = sum(c for _, c in self.heads)
        names = [k for k, v in self.global_params.items() if v.dim() == 1 and v.numel() == n]
        if not names:
            raise ValueError(f"no classifier bias with {n} entries among the model's parameters")
        return names[-1]
