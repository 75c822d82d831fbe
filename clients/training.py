"""Local training of one user: FedSGD (one full-batch gradient step) or FedAvg (local SGD epochs)."""

from __future__ import annotations

import torch
from torch import nn

from fl_sim.core.defenses.dp_sgd import DpTrainResult, dp_local_train  # DP-SGD's training lives with its defense
from fl_sim.core.models import Head, task_loss
from fl_sim.core.records import LocalTrainResult

__all__ = ["DpTrainResult", "LocalTrainResult", "dp_local_train", "local_train"]


def local_train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, heads: list[Head], *,
                protocol: str, lr: float, epochs: int, batch_size: int, seed: int) -> LocalTrainResult:
    """Train ``model`` in place on one user's photos; the caller diffs the weights."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = images.shape[0]
    if protocol == "fedsgd":
        opt.zero_grad(set_to_none=True)
        loss = task_loss(model(images), labels, heads)
        loss.backward()
        opt.step()
        return LocalTrainResult(loss=float(loss.detach()), local_steps=1, num_examples=n)
    if protocol != "fedavg":
        raise ValueError(f"unknown protocol {protocol!r}")
    gen = torch.Generator().manual_seed(seed)
    steps, total = 0, 0.0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = task_loss(model(images[idx]), labels[idx], heads)
            loss.backward()
            opt.step()
            steps += 1
            total += float(loss.detach())
    return LocalTrainResult(loss=total / max(steps, 1), local_steps=steps, num_examples=n)
