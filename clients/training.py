"""Local training of one user: FedSGD (one full-batch gradient step) or FedAvg (local SGD epochs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fl_sim.core.models import Head, task_loss


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


@dataclass(frozen=True)
class DpTrainResult:
    """A DP-SGD round: the usual result, plus the accountant's state and epsilon after it."""

    result: LocalTrainResult
    epsilon: float
    accountant_state: dict[str, Any]


def dp_local_train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, heads: list[Head], *,
                   protocol: str, lr: float, epochs: int, batch_size: int, seed: int, noise_multiplier: float,
                   max_grad_norm: float, delta: float, accountant: str,
                   accountant_state: dict[str, Any] | None) -> DpTrainResult:
    """Local training under DP-SGD (Opacus: Poisson sampling, per-sample clipping, Gaussian noise).

    ``accountant_state`` is this user's accountant from earlier rounds: Opacus builds a new engine
    per call, so without it epsilon would restart at every round instead of accumulating.
    """
    import copy

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)  # Poisson sampling and the noise draw from torch's global generator
    engine = PrivacyEngine(accountant=accountant)
    if accountant_state:
        engine.accountant.load_state_dict(accountant_state)
    inner = copy.deepcopy(model)  # Opacus hooks stay on the copy; the caller's model is reused next round
    inner.train()
    n = images.shape[0]
    loader = DataLoader(TensorDataset(images, labels), batch_size=n if protocol == "fedsgd" else batch_size)
    opt = torch.optim.SGD(inner.parameters(), lr=lr)
    private, dp_opt, dp_loader = engine.make_private(module=inner, optimizer=opt, data_loader=loader,
                                                     noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                                                     poisson_sampling=True, grad_sample_mode="hooks")
    steps, total = 0, 0.0
    for _ in range(1 if protocol == "fedsgd" else epochs):
        for x, y in dp_loader:
            # An empty Poisson batch still steps (noise only), as the accounting assumes.
            dp_opt.zero_grad(set_to_none=True)
            loss = task_loss(private(x), y, heads)
            loss.backward()
            dp_opt.step()
            steps += 1
            total += float(loss.detach())
    model.load_state_dict(inner.state_dict())
    eps = float(engine.accountant.get_epsilon(delta)) if noise_multiplier > 0 else float("inf")
    state = dict(engine.accountant.state_dict())
    return DpTrainResult(LocalTrainResult(loss=total / max(steps, 1), local_steps=steps, num_examples=n), eps, state)
