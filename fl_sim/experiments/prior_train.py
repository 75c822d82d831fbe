"""`fl-sim prior train`: a small DDPM on a prior split (never the users), EMA, checkpoints, resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fl_sim.core.errors import FlSimError


@dataclass(frozen=True)
class PriorTrainSpec:
    """Training recipe; the defaults are the embedded 32x32 face prior's."""

    data: str = "synthfaces:prior"
    size: int = 32
    steps: int = 20000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 200
    channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention: bool = True
    prediction_type: str = "v_prediction"  # converges faster per CPU-second than epsilon here
    schedule: str = "squaredcos_cap_v2"
    min_snr_gamma: float = 5.0
    ema_power: float = 0.75  # EMA warm-up (decay 1 - (1+step)^-power): usable after a few hundred steps
    ema_max_decay: float = 0.999
    checkpoint_every: int = 1000
    seed: int = 0


def build_unet(spec: PriorTrainSpec) -> Any:
    from diffusers import UNet2DModel

    n = len(spec.channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if spec.attention and n >= 2:
        down[-2], up[1] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(sample_size=spec.size, in_channels=3, out_channels=3, layers_per_block=spec.layers_per_block,
                       block_out_channels=tuple(spec.channels), down_block_types=tuple(down), up_block_types=tuple(up),
                       norm_num_groups=min(16, spec.channels[0]))


def build_scheduler(spec: PriorTrainSpec) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=spec.schedule, prediction_type=spec.prediction_type,
                         clip_sample=True)


def load_training_images(data: str, size: int) -> torch.Tensor:
    """All photos of a dataset at ``size`` as floats in [-1, 1]. Refuses the users split."""
    from fl_sim.core.data import open_dataset
    from fl_sim.core.data.base import to_tensor

    if data.split(":")[0] == "synthfaces" and data.partition(":")[2] in ("", "users"):
        raise FlSimError("prior training data must not be the users split (use synthfaces:prior)")
    ds = open_dataset(data)
    if hasattr(ds, "all_photos_uint8"):
        photos, _ = ds.all_photos_uint8()
    else:
        photos = np.concatenate([ds.photos_uint8(u.user) for u in ds.users()])
    return to_tensor(photos, size)


def train_prior(spec: PriorTrainSpec, out: Path, *, resume: bool = False, images: torch.Tensor | None = None,
                progress: Callable[[int, float, float], None] | None = None,
                max_seconds: float | None = None, device: str = "cpu", init_from: Path | None = None) -> dict[str, Any]:
    """Train (or resume) and export a diffusers-format prior into ``out`` (unet/, scheduler/, card).

    ``device`` moves the network and data (e.g. "cuda"); the random draws stay on a CPU generator, so a
    run is resumable and reproducible across devices up to floating-point order. ``init_from``: start
    from an exported prior's weights (a diffusers folder of the same architecture) with a fresh optimiser.
    """
    from diffusers.training_utils import EMAModel

    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    images = load_training_images(spec.data, spec.size) if images is None else images
    unet, sched = build_unet(spec), build_scheduler(spec)
    if init_from is not None and not resume:
        from diffusers import UNet2DModel

        unet.load_state_dict(UNet2DModel.from_pretrained(init_from, subfolder="unet").state_dict())
    unet = unet.to(device)
    images = images.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=spec.lr, weight_decay=0.0)
    ema = EMAModel(unet.parameters(), decay=spec.ema_max_decay, use_ema_warmup=True, inv_gamma=1.0, power=spec.ema_power)
    step, seconds, losses = 0, 0.0, []
    gen = torch.Generator().manual_seed(spec.seed)
    if resume:
        if not ckpt.exists():
            raise FlSimError(f"--resume: no checkpoint at {ckpt}")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        saved = state["spec"]
        if (saved["channels"], saved["size"], saved["prediction_type"]) != (list(spec.channels), spec.size,
                                                                          spec.prediction_type):
            raise FlSimError(f"--resume: checkpoint {ckpt} was trained with another architecture or objective")
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["opt"])
        ema.load_state_dict(state["ema"])
        ema.to(device)
        step, seconds, losses = state["step"], state["seconds"], state["losses"]
        gen.set_state(state["gen"])
    ab = sched.alphas_cumprod.float().to(device)
    snr = ab / (1 - ab)
    # min-SNR-γ weighting (Hang et al. 2023), expressed for the network's target.
    if spec.prediction_type == "v_prediction":
        weight = torch.clamp(snr, max=spec.min_snr_gamma) / (snr + 1)
    elif spec.prediction_type == "epsilon":
        weight = torch.clamp(snr, max=spec.min_snr_gamma) / snr
    else:
        weight = torch.clamp(snr, max=spec.min_snr_gamma)
    unet.train()
    t_start = time.time()
    n = images.shape[0]
    while step < spec.steps:
        if max_seconds is not None and time.time() - t_start > max_seconds:
            break
        idx = torch.randint(0, n, (spec.batch_size,), generator=gen).to(device)
        x0 = images[idx]
        flip = (torch.rand(spec.batch_size, generator=gen) < 0.5).to(device)
        x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (spec.batch_size,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a, b = ab[t].sqrt().view(-1, 1, 1, 1), (1 - ab[t]).sqrt().view(-1, 1, 1, 1)
        x_t = a * x0 + b * noise
        target = {"epsilon": noise, "sample": x0, "v_prediction": a * noise - b * x0}[spec.prediction_type]
        pred = unet(x_t, t).sample
        loss = (weight[t] * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()
        for g in opt.param_groups:
            g["lr"] = spec.lr * min(1.0, (step + 1) / spec.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        step += 1
        losses.append(float(loss.detach()))
        if progress:
            progress(step, losses[-1], seconds + time.time() - t_start)
        if step % spec.checkpoint_every == 0 or step == spec.steps:
            _checkpoint(ckpt, spec, unet, opt, ema, step, seconds + time.time() - t_start, losses, gen)
            export_prior(out, spec, unet, ema, sched, step, seconds + time.time() - t_start, losses)
    seconds += time.time() - t_start
    _checkpoint(ckpt, spec, unet, opt, ema, step, seconds, losses, gen)
    return export_prior(out, spec, unet, ema, sched, step, seconds, losses)


def _checkpoint(path: Path, spec: PriorTrainSpec, unet: Any, opt: Any, ema: Any, step: int, seconds: float,
                losses: list[float], gen: torch.Generator) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"spec": asdict(spec) | {"channels": list(spec.channels)}, "unet": unet.state_dict(),
                "opt": opt.state_dict(), "ema": ema.state_dict(), "step": step, "seconds": seconds,
                "losses": losses, "gen": gen.get_state()}, tmp)
    tmp.replace(path)


def export_prior(out: Path, spec: PriorTrainSpec, unet: Any, ema: Any, sched: Any, step: int, seconds: float,
                 losses: list[float]) -> dict[str, Any]:
    """Write the EMA weights in diffusers format, a sample grid and the model card."""
    from attacks.priors import DiffusionPrior

    export = build_unet(spec)
    export.load_state_dict(unet.state_dict())
    ema.copy_to(export.parameters())
    export.save_pretrained(out / "unet")
    sched.save_pretrained(out / "scheduler")
    prior = DiffusionPrior(export, sched.alphas_cumprod, spec.prediction_type, source=str(out))
    grid = prior.sample(64, steps=50, generator=torch.Generator().manual_seed(1234))
    save_grid(grid, out / "samples.png", nrow=8)
    recent = losses[-200:]
    info = {"data": spec.data, "size": spec.size, "steps": step, "seconds": round(seconds, 1),
            "params": sum(p.numel() for p in export.parameters()), "loss_recent_mean": float(np.mean(recent)) if recent else None,
            "spec": asdict(spec) | {"channels": list(spec.channels)}}
    (out / "training.json").write_text(json.dumps(info, indent=2))
    (out / "README.md").write_text(model_card(info))
    return info


def model_card(info: dict[str, Any]) -> str:
    s = info["spec"]
    return f"""# fl-sim diffusion prior ({info['size']}x{info['size']})

- data: `{info['data']}` only (identities disjoint from the users split)
- network: diffusers UNet2DModel, channels {s['channels']}, {info['params']:,} parameters, EMA weights
- objective: {s['prediction_type']}, {s['schedule']} schedule (1000 steps), min-SNR-{s['min_snr_gamma']} weighting, random flips
- optimiser: AdamW lr {s['lr']} (warm-up {s['warmup_steps']}), batch {s['batch_size']}, grad clip 1.0; EMA warm-up power {s['ema_power']}, max decay {s['ema_max_decay']}
- trained: {info['steps']} steps in {info['seconds'] / 3600:.2f} CPU-hours (resumable: `fl-sim prior train --resume`)
- recent loss (mean of last 200 steps): {info['loss_recent_mean']}
- samples: `samples.png` (64 DDIM-50 samples, fixed seed)
"""


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8, scale: int = 2) -> None:
    """Images in [-1, 1] (N, 3, H, W) -> one PNG grid."""
    from PIL import Image

    x = ((images.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    canvas = torch.full((3, rows * (h + 2), nrow * (w + 2)), 255, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        canvas[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, k * (w + 2) + 1:k * (w + 2) + 1 + w] = x[i]
    img = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
