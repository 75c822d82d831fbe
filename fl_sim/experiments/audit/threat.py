"""The audit's threat model: first-layer extraction, DP-SGD on one gradient, the noise it leaves (s = ‖[x, 1]‖/μ)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fl_sim.core.errors import FlSimError


def extract_first_layer(grad_weight: torch.Tensor, grad_bias: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One sample's input from its gradient of a fully connected first layer with bias.

    For unit i, ∂ℓ/∂W_i = ∂ℓ/∂b_i · xᵀ, so x = ∇W_i / ∇b_i for any unit with ∇b_i ≠ 0; the unit
    with the largest |∇b_i| is the best conditioned. Returns (x, i).
    """
    i = int(grad_bias.abs().argmax())
    if float(grad_bias[i]) == 0.0:
        raise FlSimError("extraction: every bias gradient is zero (the sample did not reach the first layer)")
    return grad_weight[i] / grad_bias[i], i


def clip_and_noise(grads: Sequence[torch.Tensor], clip: float, noise_multiplier: float,
                   generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """DP-SGD on one sample's gradient: scale the whole gradient to norm ≤ C, add N(0, (zC)²) to every entry.

    Returns (noisy, clipped): the released gradient and the clipped one before noise.
    """
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    scale = min(1.0, clip / max(norm, 1e-12))
    clipped = [g * scale for g in grads]
    std = noise_multiplier * clip
    noisy = [c + std * torch.randn(c.shape, generator=generator, dtype=c.dtype) for c in clipped]
    return noisy, clipped


def noise_std(x: torch.Tensor, mu: float) -> torch.Tensor:
    """Per-image std s of the extracted image's noise, under the defender's worst case.

    Model. The informed adversary knows every other sample of the batch and subtracts their
    gradients, leaving the target's clipped gradient g plus N(0, σ²I), σ = zC = C/μ. The worst case
    for the defender is a gradient entirely in one unit's row of the first layer:
    g = β·[x, 1] with ‖g‖ = C, so |β| = C/‖[x, 1]‖. The adversary reads the noisy row and divides
    by β (it is granted the clean bias gradient — one scalar; dividing by the noisy bias instead
    only adds error, which would favour the defender), so

        y = (β x + n) / β = x + n/β,   n ~ N(0, σ² I)   ⇒   s = σ/|β| = ‖[x, 1]‖ / μ.

    Any gradient mass outside that row makes |β| smaller and s larger, so this s is a lower bound
    on the noise DP-SGD leaves in a real network (tested on a real net in tests/test_audit.py).
    """
    if mu <= 0 or not math.isfinite(mu):
        raise FlSimError(f"--mu: expected positive finite values, got {mu}")
    return (x.flatten(1).pow(2).sum(1) + 1.0).sqrt() / mu


def estimate_noise_std(y: torch.Tensor, mu: float) -> torch.Tensor:
    """s from the observation alone (the adversary does not know ‖x‖).

    E‖y‖² = ‖x‖² + d s² and μ² s² = ‖x‖² + 1 give s² = (‖y‖² + 1)/(μ² + d); with d = 3072 pixels
    the estimate is within a percent or so.
    """
    d = y[0].numel()
    return ((y.flatten(1).pow(2).sum(1) + 1.0) / (mu * mu + d)).sqrt()


def observe(x: torch.Tensor, mu: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The adversary's noisy image y = x + N(0, s² I) with s = ‖[x, 1]‖/μ (see `noise_std`)."""
    s = noise_std(x, mu).view(-1, 1, 1, 1)
    return x + s * torch.randn(x.shape, generator=generator, dtype=x.dtype)
