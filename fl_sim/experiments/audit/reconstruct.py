"""The audit's reconstructions beside the raw observation: a classical Wiener filter and the diffusion prior."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.priors import DiffusionPrior


@dataclass
class WienerFilter:
    """Per-frequency Wiener shrinkage around a mean image, both measured on calibration images.

    x̂ = m + F⁻¹[ P/(P + s²) · F(y − m) ] with orthonormal FFT, P the calibration images' mean
    power spectrum per channel. The gain is fixed by s alone: the audited images are never looked at.
    """

    mean: torch.Tensor   # (3, H, W)
    power: torch.Tensor  # (3, H, W)
    count: int = 0       # calibration images it was fitted on

    @classmethod
    def fit(cls, images: torch.Tensor) -> "WienerFilter":
        mean = images.mean(0)
        spec = torch.fft.fft2((images - mean).double(), norm="ortho")
        return cls(mean=mean, power=(spec.abs() ** 2).mean(0).float(), count=len(images))

    def __call__(self, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        s2 = (s.view(-1, 1, 1, 1) ** 2).to(y.dtype)
        gain = self.power / (self.power + s2)
        out = torch.fft.ifft2(gain * torch.fft.fft2(y - self.mean, norm="ortho"), norm="ortho").real
        return (out + self.mean).float().clamp(-1, 1)


# -- the diffusion reconstruction ------------------------------------------------------------
def t_for_std(prior: DiffusionPrior, s: float) -> int | None:
    """ᾱ_t = 1/(1 + s²) on the prior's own schedule; None beyond the prior's range."""
    return prior.t_for_noise_std(float(s))


@torch.no_grad()
def diffusion_reconstruct(prior: DiffusionPrior, y: torch.Tensor, s: torch.Tensor, *, steps: int = 25,
                          dc: float = 0.0, samples: int = 1, eta: float = 0.0,
                          generator: torch.Generator | None = None) -> torch.Tensor | None:
    """DDIM from √ᾱ_t·y at each image's own t(s) down to 0; None if any s is beyond the prior's range.

    Data consistency (dc > 0): each step's x̂0 is pulled toward y by w_t = dc · r_t/(r_t + s²),
    r_t = (1−ᾱ_t)/ᾱ_t the iterate's own noise-to-signal ratio: at the start (r_t = s²) the iterate is
    as noisy as y and the pull is dc/2; it fades as the iterate becomes cleaner than y.
    With ``samples`` > 1 (needs eta > 0) the estimate is the mean of that many posterior samples.
    The steps are the prior's own sampler (`DiffusionPrior.ddim` with one start per image).
    """
    ts = [t_for_std(prior, float(v)) for v in s]
    if any(t is None for t in ts):
        return None
    dev = prior.device
    k = max(1, samples)
    y = y.to(dev).repeat(k, 1, 1, 1)
    s2 = (s.to(dev).double() ** 2).repeat(k)
    t0 = torch.tensor(ts, dtype=torch.float64, device=dev).repeat(k)
    ab_all = prior.alphas_cumprod.to(dev)

    def pull_toward_y(t: int | torch.Tensor, _x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        ab_t = ab_all[torch.as_tensor(t, device=dev)]
        r = (1 - ab_t) / ab_t
        w = (dc * r / (r + s2)).view(-1, 1, 1, 1).float()
        return x0 + w * (y - x0)

    x = ab_all[t0.long()].sqrt().view(-1, 1, 1, 1).float() * y
    x = prior.ddim(x, t0, steps, eta=eta, hook=pull_toward_y if dc > 0 else None, generator=generator)
    return x.view(k, -1, *x.shape[1:]).mean(0).clamp(-1, 1).cpu()
