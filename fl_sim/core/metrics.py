"""Image metrics for images in [-1, 1]: PSNR and SSIM, the one copy every report and audit uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR (dB) of one or more images in [-1, 1] against ``ref`` (peak-to-peak 2), averaged."""
    mse = ((x.clamp(-1, 1) - ref) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(4.0 / mse)).mean())


def ssim(x: torch.Tensor, ref: torch.Tensor, window: int = 7, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window) of images in [-1, 1], computed on [0, 1]."""
    a, b = (x.clamp(-1, 1) + 1) / 2, (ref.clamp(-1, 1) + 1) / 2
    if a.dim() == 3:
        a, b = a[None], b[None]
    g = torch.exp(-(torch.arange(window) - window // 2).float() ** 2 / (2 * sigma ** 2))
    g = (g / g.sum())
    k = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window).contiguous()

    def conv(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k, groups=a.shape[1])

    mu_a, mu_b = conv(a), conv(b)
    var_a, var_b = conv(a * a) - mu_a ** 2, conv(b * b) - mu_b ** 2
    cov = conv(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
