"""A tiny CNN with the built-in models' signature: (n_outputs, image_size, width, norm)."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """Two strided conv layers (GroupNorm, so DP-SGD accepts it), global pooling, a linear head."""

    def __init__(self, n_outputs: int, image_size: int = 32, width: int = 16, norm: str = "group") -> None:
        super().__init__()

        def norm_layer(ch: int) -> nn.Module:
            return nn.BatchNorm2d(ch) if norm == "batch" else nn.GroupNorm(min(4, ch), ch)

        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), norm_layer(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), norm_layer(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(2 * width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
