"""`DiffusionPrior`: a diffusers UNet2DModel and its noise schedule, kept apart, with what attacks need."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


class PriorError(ValueError):
    """A prior that cannot be loaded or used as asked; one line naming the path, id or value."""


@dataclass(frozen=True)
class DdimStep:
    """One reverse step: the next sample and the clean-image estimate it came from."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class DiffusionPrior:
    """Noise prediction, x̂0, ᾱ_t, forward noising and DDIM from any t, for images in [-1, 1].

    ``prediction_type`` is the network's (epsilon, sample or v_prediction); every method here
    speaks ε and x̂0 whatever the network predicts, so attacks need not care.
    """

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                 source: str = "") -> None:
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise PriorError(f"prior {source}: unknown prediction_type {prediction_type!r}")
        self.unet = unet.eval()
        self.alphas_cumprod = alphas_cumprod.double()
        self.prediction_type = prediction_type
        self.source = source
        self.size = int(getattr(unet.config, "sample_size", 32))
        self.num_train_timesteps = len(alphas_cumprod)
        for p in self.unet.parameters():
            p.requires_grad_(False)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path, device: str | torch.device | None = None) -> "DiffusionPrior":
        """From a local diffusers-format folder (unet/ + scheduler/, or a bare UNet folder) or a hub id."""
        from diffusers import DDPMScheduler, UNet2DModel

        src = str(source)
        path = Path(src).expanduser()
        try:
            if path.exists():
                unet_dir = path / "unet" if (path / "unet").is_dir() else path
                sched_dir = path / "scheduler" if (path / "scheduler").is_dir() else path
                if not (unet_dir / "config.json").exists():
                    raise PriorError(f"no diffusers UNet at {path} (expected unet/config.json or config.json)")
                unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)
                sched = DDPMScheduler.from_pretrained(sched_dir) if (sched_dir / "scheduler_config.json").exists() \
                    else DDPMScheduler()
            elif src.startswith((".", "/", "~")) or src.count("/") != 1:
                raise PriorError(f"prior path not found: {src}")
            else:
                # Hub repos come as a bare UNet (google/ddpm-*) or as a pipeline with unet/ and scheduler/.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        unet = UNet2DModel.from_pretrained(src, low_cpu_mem_usage=False)
                        sched = DDPMScheduler.from_pretrained(src)
                    except OSError:
                        unet = UNet2DModel.from_pretrained(src, subfolder="unet", low_cpu_mem_usage=False)
                        sched = DDPMScheduler.from_pretrained(src, subfolder="scheduler")
        except PriorError:
            raise
        except Exception as exc:  # noqa: BLE001 - hub/network/format failures become one line
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
            where = "hub id" if not path.exists() else "folder"
            raise PriorError(f"cannot load diffusion prior from {where} {src!r} (offline? wrong id?): {first}") from None
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return cls(unet.to(dev), sched.alphas_cumprod, sched.config.prediction_type, source=src)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # -- schedule --------------------------------------------------------------------------
    def alpha_bar(self, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        return self.alphas_cumprod[t].float()

    def t_for_noise_std(self, s: float) -> int | None:
        """The t whose forward marginal matches ``y = x + N(0, s²)`` scaled by √ᾱ: ᾱ_t = 1/(1+s²).

        ``None`` when s² exceeds what the schedule's last step allows (beyond the prior's range).
        """
        target = 1.0 / (1.0 + s * s)
        ab = self.alphas_cumprod
        if target < float(ab[-1]):
            return None
        return int(torch.argmin((ab - target).abs()))

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε."""
        noise = torch.randn_like(x0) if noise is None else noise
        ab = self._col(self.alpha_bar(t), x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    # -- network ---------------------------------------------------------------------------
    def _col(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        v = v.to(like.device, like.dtype)
        return v.reshape(-1, 1, 1, 1) if v.dim() else v

    def _net(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device).long()
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        return self.unet(x_t, t).sample

    def predict(self, x_t: torch.Tensor, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, x̂0) at (x_t, t), whatever the network predicts."""
        out = self._net(x_t, t)
        ab = self._col(self.alpha_bar(t), x_t)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x_t - b * eps) / a
        elif self.prediction_type == "sample":
            x0 = out
            eps = (x_t - a * x0) / b.clamp_min(1e-8)
        else:  # v = a ε − b x0
            x0 = a * x_t - b * out
            eps = b * x_t + a * out
        return eps, x0

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        return self.predict(x_t, t)[0]

    def x0(self, x_t: torch.Tensor, t: torch.Tensor | int, clip: bool = True) -> torch.Tensor:
        x0 = self.predict(x_t, t)[1]
        return x0.clamp(-1, 1) if clip else x0

    # -- reverse process -------------------------------------------------------------------
    def ddim_step(self, x_t: torch.Tensor, t: int, t_prev: int, eta: float = 0.0,
                  generator: torch.Generator | None = None) -> DdimStep:
        """One DDIM step t -> t_prev (t_prev < 0 means the clean image)."""
        eps, x0 = self.predict(x_t, t)
        x0 = x0.clamp(-1, 1)
        if t_prev < 0:
            return DdimStep(x0, x0)
        ab_t, ab_p = float(self.alphas_cumprod[t]), float(self.alphas_cumprod[t_prev])
        # Re-derive ε from the clipped x̂0 so the step stays consistent with it.
        eps = (x_t - math.sqrt(ab_t) * x0) / math.sqrt(max(1 - ab_t, 1e-12))
        sigma = eta * math.sqrt(max((1 - ab_p) / (1 - ab_t) * (1 - ab_t / ab_p), 0.0))
        dir_xt = math.sqrt(max(1 - ab_p - sigma ** 2, 0.0)) * eps
        prev = math.sqrt(ab_p) * x0 + dir_xt
        if sigma > 0:
            prev = prev + sigma * torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return DdimStep(prev, x0)

    @torch.no_grad()
    def ddim(self, x_t: torch.Tensor, t_start: int, steps: int = 50, eta: float = 0.0,
             hook: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Run DDIM from ``x_t`` at ``t_start`` down to a clean image.

        ``hook(t, x_t, x̂0) -> x̂0'`` may edit each step's clean estimate (data consistency).
        """
        ts = self.timesteps(t_start, steps)
        x = x_t
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            if hook is None:
                x = self.ddim_step(x, t, t_prev, eta, generator).prev_sample
                continue
            eps, x0 = self.predict(x, t)
            x0 = hook(t, x, x0.clamp(-1, 1)).clamp(-1, 1)
            if t_prev < 0:
                x = x0
                continue
            ab_t, ab_p = float(self.alphas_cumprod[t]), float(self.alphas_cumprod[t_prev])
            eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(max(1 - ab_t, 1e-12))
            x = math.sqrt(ab_p) * x0 + math.sqrt(1 - ab_p) * eps
        return x

    @staticmethod
    def timesteps(t_start: int, steps: int) -> list[int]:
        """Descending, evenly spaced timesteps from ``t_start`` to 0 (at most t_start + 1 of them)."""
        steps = max(1, min(steps, t_start + 1))
        return sorted({int(round(t_start * (1 - i / steps))) for i in range(steps)}, reverse=True)

    @torch.no_grad()
    def sample(self, n: int, steps: int = 50, generator: torch.Generator | None = None) -> torch.Tensor:
        """n fresh images from pure noise."""
        x = torch.randn((n, 3, self.size, self.size), generator=generator).to(self.device)
        return self.ddim(x, self.num_train_timesteps - 1, steps)

    # -- resolution ------------------------------------------------------------------------
    def to_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Resize attacked-size images to the prior's resolution (differentiable)."""
        if x.shape[-1] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)

    def from_prior(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """Resize prior-resolution images to ``size`` (differentiable)."""
        if x.shape[-1] == size:
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
