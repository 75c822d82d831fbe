"""Local training of one user: FedSGD (one full-batch gradient step) or FedAvg (local SGD epochs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fl_sim.models import Head, head_accuracy, task_loss


@dataclass(frozen=True)
class LocalTrainResult:
    """What a client reports besides its new weights."""

    loss: float
    local_steps: int
    num_examples: int


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


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, heads: list[Head]) -> dict[str, float]:
    """Loss and per-head accuracy on held-out photos."""
    model.eval()
    logits = model(images)
    out: dict[str, float] = {"loss": float(task_loss(logits, labels, heads))}
    correct = counted = 0
    for name, (c, k) in head_accuracy(logits, labels, heads).items():
        out[f"acc_{name}"] = c / k if k else float("nan")
        correct += c
        counted += k
    out["accuracy"] = correct / counted if counted else float("nan")
    return out
