"""Analytic extraction through a fully connected first layer with bias: x = ∇W_i / ∇b_i."""

from __future__ import annotations

import torch


def invert_first_linear(grad_weight: torch.Tensor, grad_bias: torch.Tensor, min_rel: float = 1e-3) -> torch.Tensor:
    """The input that produced one sample's first-layer gradient (flattened).

    For y = Wx + b, ∂ℓ/∂W_i = (∂ℓ/∂b_i)·xᵀ, so every unit with a non-zero bias gradient gives x
    exactly; units are combined weighted by |∂ℓ/∂b_i| (a least-squares estimate, which also
    averages noise when the gradients are noisy).
    """
    gb = grad_bias.flatten()
    keep = gb.abs() > min_rel * gb.abs().max().clamp_min(1e-30)
    if not bool(keep.any()):
        raise ValueError("all first-layer bias gradients are zero: nothing to invert")
    w, b = grad_weight[keep], gb[keep]
    return (b[:, None] * w).sum(0) / (b * b).sum()
