"""`DiffusionPrior`: a diffusers UNet2DModel and its noise schedule, kept apart, with what attacks need."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, overload

import torch
import torch.nn.functional as F


# A timestep: one for the whole batch, or one per sample (a long tensor of shape (B,)).
Timestep: TypeAlias = int | torch.Tensor
# Edits a step's clean-image estimate: (t, x_t, x̂0) -> x̂0'.
X0Hook: TypeAlias = Callable[[Timestep, torch.Tensor, torch.Tensor], torch.Tensor]


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
        unet: Any  # diffusers' loaders are untyped
        sched: Any
        try:
            if path.exists():
                unet_dir = path / "unet" if (path / "unet").is_dir() else path
                sched_dir = path / "scheduler" if (path / "scheduler").is_dir() else path
                if not (unet_dir / "config.json").exists():
                    raise PriorError(f"no diffusers UNet at {path} (expected unet/config.json or config.json)")
                unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)  # type: ignore[no-untyped-call]
                if (sched_dir / "scheduler_config.json").exists():
                    sched = DDPMScheduler.from_pretrained(sched_dir)  # type: ignore[no-untyped-call]
                else:
                    sched = DDPMScheduler()  # type: ignore[no-untyped-call]
            elif src.startswith((".", "/", "~")) or src.count("/") != 1:
                raise PriorError(f"prior path not found: {src}")
            else:
                # Hub repos come as a bare UNet (google/ddpm-*) or as a pipeline with unet/ and scheduler/.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        unet = UNet2DModel.from_pretrained(src, low_cpu_mem_usage=False)  # type: ignore[no-untyped-call]
                        sched = DDPMScheduler.from_pretrained(src)  # type: ignore[no-untyped-call]
                    except OSError:
                        unet = UNet2DModel.from_pretrained(src, subfolder="unet", low_cpu_mem_usage=False)  # type: ignore[no-untyped-call]
                        sched = DDPMScheduler.from_pretrained(src, subfolder="scheduler")  # type: ignore[no-untyped-call]
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
        out: torch.Tensor = self.unet(x_t, t).sample
        return out

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
    def _ab(self, t: Timestep) -> torch.Tensor:
        """ᾱ_t in float64 on the schedule's device: a 0-d tensor for an int t, one per sample for a tensor."""
        return self.alphas_cumprod[torch.as_tensor(t, device=self.alphas_cumprod.device).long()]

    def ddim_step(self, x_t: torch.Tensor, t: Timestep, t_prev: Timestep, eta: float = 0.0,
                  generator: torch.Generator | None = None, hook: X0Hook | None = None) -> DdimStep:
        """One DDIM step t -> t_prev (t_prev < 0 means the clean image).

        ``t`` and ``t_prev`` are ints, or one timestep per sample (tensors of shape (B,)), so a batch
        whose images start at different noise levels steps together. ``hook(t, x_t, x̂0) -> x̂0'`` may
        edit the clipped clean estimate (data consistency); the result is clipped again. With eta > 0
        the step draws fresh noise from ``generator`` (on the generator's device, then moved).
        """
        _, x0 = self.predict(x_t, t)
        x0 = x0.clamp(-1, 1)
        if hook is not None:
            x0 = hook(t, x_t, x0).clamp(-1, 1)
        if bool((torch.as_tensor(t_prev) < 0).all()):
            return DdimStep(x0, x0)
        # Coefficients in float64, cast once: the same numbers whether t is an int or per sample.
        ab_t, ab_p = self._ab(t), self._ab(t_prev)
        sigma = eta * ((1 - ab_p) / (1 - ab_t).clamp_min(1e-12) * (1 - ab_t / ab_p)).clamp_min(0).sqrt()
        # Re-derive ε from the clipped x̂0 so the step stays consistent with it.
        eps = (x_t - self._col(ab_t.sqrt(), x_t) * x0) / self._col((1 - ab_t).clamp_min(1e-12).sqrt(), x_t)
        prev = self._col(ab_p.sqrt(), x_t) * x0 + self._col((1 - ab_p - sigma ** 2).clamp_min(0).sqrt(), x_t) * eps
        if eta > 0:
            where = generator.device if generator is not None else x_t.device
            noise = torch.randn(x_t.shape, generator=generator, device=where, dtype=x_t.dtype).to(x_t.device)
            prev = prev + self._col(sigma, x_t) * noise
        return DdimStep(prev, x0)

    @torch.no_grad()
    def ddim(self, x_t: torch.Tensor, t_start: Timestep, steps: int = 50, eta: float = 0.0,
             hook: X0Hook | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run DDIM from ``x_t`` at ``t_start`` (an int, or one per sample) down to a clean image.

        ``hook(t, x_t, x̂0) -> x̂0'`` may edit each step's clean estimate (data consistency); ``eta``
        > 0 makes the steps stochastic (noise from ``generator``).
        """
        ts: list[Timestep] = list(self.timesteps(t_start, steps))
        x = x_t
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = self.ddim_step(x, t, t_prev, eta, generator, hook).prev_sample
        return x

    @staticmethod
    @overload
    def timesteps(t_start: int, steps: int) -> list[int]: ...

    @staticmethod
    @overload
    def timesteps(t_start: torch.Tensor, steps: int) -> list[torch.Tensor]: ...

    @staticmethod
    def timesteps(t_start: Timestep, steps: int) -> list[int] | list[torch.Tensor]:
        """Descending, evenly spaced timesteps from ``t_start`` toward 0: round(t_start·(1 − i/steps)).

        An int start: distinct values only (at most t_start + 1 of them). A per-sample tensor start:
        exactly ``steps`` tensors, so every sample takes the same number of steps; a repeated value
        is a step from t to t, which leaves the sample as it is.
        """
        if isinstance(t_start, torch.Tensor):
            t0 = t_start.double()
            return [torch.round(t0 * (1 - i / steps)).long() for i in range(max(1, steps))]
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
