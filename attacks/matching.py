"""Gradient matching: per-candidate parameter gradients (batched over users) and distances."""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap

from attacks.observation import Observation


def candidate_gradients(obs: Observation, params: dict[str, torch.Tensor], x: torch.Tensor,
                        y: torch.Tensor, steps: int = 1) -> dict[str, torch.Tensor]:
    """∇θ ℓ(f_θ(x_b), y_b) for each candidate b separately, differentiable in x: {name: (B, ...)}.

    ``steps`` > 1 simulates a FedAvg client instead: that many local SGD steps (the observation's
    lr) on the candidate, returned as the pseudo-gradient (θ0 − θK)/(η·K) the server computes from
    the real update — differentiable through all K steps (K times the cost).
    """

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return obs.loss_fn(functional_call(obs.model, p, (xi[None],)), yi[None])

    if steps <= 1:
        per_example: dict[str, torch.Tensor] = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
        return per_example

    def pseudo_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> dict[str, torch.Tensor]:
        q = p
        for _ in range(steps):
            g = grad(loss_one)(q, xi, yi)
            q = {k: q[k] - obs.lr * g[k] for k in q}
        return {k: (p[k] - q[k]) / (obs.lr * steps) for k in p}

    return vmap(pseudo_one, in_dims=(None, 0, 0))(params, x, y)


def _flat(g: dict[str, torch.Tensor], keys: list[str], batched: bool) -> torch.Tensor:
    if batched:
        return torch.cat([g[k].flatten(1) for k in keys], dim=1)
    return torch.cat([g[k].flatten() for k in keys])[None]


def cosine_distance(cand: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """1 − cos(∇ candidate b, target b) over all layers, per b: (B,). Scale-free, zero at the truth."""
    keys = list(targets[0])
    a = _flat(cand, keys, True)
    t = torch.cat([_flat(tg, keys, False) for tg in targets])
    return 1 - torch.nn.functional.cosine_similarity(a, t, dim=1, eps=1e-12)


def l2_distance(cand: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Σ ||∇ candidate b − target b||² per b: (B,) (DLG's distance; scale-sensitive)."""
    keys = list(targets[0])
    a = _flat(cand, keys, True)
    t = torch.cat([_flat(tg, keys, False) for tg in targets])
    return ((a - t) ** 2).sum(1)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV per image: (B,)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy
