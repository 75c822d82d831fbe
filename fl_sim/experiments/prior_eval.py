"""`fl-sim prior eval`: the prior as a denoiser on held-out user photos, and a memorisation check."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attacks.priors import DiffusionPrior
from fl_sim.core.errors import FlSimError
from fl_sim.core.metrics import psnr

SIGMAS = (0.2, 0.5, 1.0)


def gaussian_blur(x: torch.Tensor, std: float) -> torch.Tensor:
    if std <= 0:
        return x
    r = max(1, int(3 * std + 0.5))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * std * std))
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def best_gaussian(noisy: torch.Tensor, clean: torch.Tensor) -> tuple[float, float]:
    """The classical baseline, tuned per noise level with the truth (an oracle-tuned filter): (psnr, std)."""
    best = (psnr(noisy, clean), 0.0)
    for std in np.arange(0.3, 3.01, 0.1):
        best = max(best, (psnr(gaussian_blur(noisy, float(std)), clean), float(std)))
    return best


def heldout_images(size: int, n: int, seed: int = 0) -> torch.Tensor:
    """The last evaluation photo (the 80th) of each user of the embedded users split (never seen by the prior)."""
    from fl_sim.core.data.base import EVAL_PHOTOS, to_tensor
    from fl_sim.core.data.synthfaces import open_synthfaces

    ds = open_synthfaces("users")
    photos = [ds.photos_uint8(u.user)[:EVAL_PHOTOS][-1] for u in ds.users()[:n]]
    return to_tensor(np.stack(photos), size)


@torch.no_grad()
def evaluate_prior(prior: DiffusionPrior, images: torch.Tensor, *, sigmas: tuple[float, ...] = SIGMAS,
                   ddim_steps: int = 25, seed: int = 0,
                   on_level: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Per σ: PSNR of the noisy input, the tuned Gaussian filter, the prior's one-step x̂0 and a DDIM run.
    ``on_level(n)``: called after each σ with the number of σ done."""
    gen = torch.Generator().manual_seed(seed)
    x = prior.to_prior(images.to(prior.device))
    levels = []
    for s in sigmas:
        y = x + s * torch.randn(x.shape, generator=gen).to(x.device)
        base, std = best_gaussian(y, x)
        t = prior.t_for_noise_std(s)
        row: dict[str, Any] = {"sigma": s, "noisy_psnr": psnr(y, x), "baseline_psnr": base, "baseline": f"gaussian std={std:.1f}px"}
        if t is None:
            row.update({"t": None, "prior_psnr": None, "note": "beyond the prior's range"})
        else:
            x_t = prior.alpha_bar(t).sqrt() * y
            one_step = torch.cat([prior.x0(x_t[i:i + 64], t) for i in range(0, len(x_t), 64)])
            ddim = torch.cat([prior.ddim(x_t[i:i + 64], t, ddim_steps) for i in range(0, len(x_t), 64)])
            row.update({"t": t, "prior_psnr": psnr(one_step, x), "prior_ddim_psnr": psnr(ddim, x)})
            row["gain_db"] = row["prior_psnr"] - base  # the headline: one-step estimate over the tuned filter
        levels.append(row)
        if on_level:
            on_level(len(levels))
    return {"levels": levels, "sigmas": [{"sigma": r["sigma"], "gain_db": r.get("gain_db")} for r in levels],
            "images": int(len(x)), "size": prior.size,
            "prior_psnr_is": "one-step x̂0 (the prior's MMSE estimate); prior_ddim_psnr is a full DDIM run from t(σ)"}


@torch.no_grad()
def memorization(prior: DiffusionPrior, train_images: torch.Tensor, n_samples: int = 64, seed: int = 0) -> dict[str, Any]:
    """Nearest training photo (SFace) of each sample vs nearest other-photo of training photos."""
    from fl_sim.core.evaluators.face import sface

    samples = prior.sample(n_samples, steps=50, generator=torch.Generator().manual_seed(seed))
    emb_train = sface().embed(train_images)
    emb_s = sface().embed(samples)
    nn_sample = (emb_s @ emb_train.T).max(1)
    sub = emb_train[: min(len(emb_train), 512)]
    sims = sub @ emb_train.T
    for i in range(len(sub)):
        sims[i, i] = -1.0  # a photo is not its own neighbour
    nn_train = sims.max(1)
    return {"samples": n_samples, "sample_to_train_nn_mean": float(nn_sample.mean()),
            "sample_to_train_nn_max": float(nn_sample.max()), "train_to_train_nn_mean": float(nn_train.mean()),
            "memorizing": bool(nn_sample.mean() > nn_train.mean())}


def prior_or_error(spec: str) -> DiffusionPrior:
    """``faces32`` (embedded), a diffusers folder or a hub id; a prior that cannot load is one line (FlSimError)."""
    from attacks.priors import PriorError
    from fl_sim.core.priors import open_prior

    try:
        return open_prior(spec)
    except PriorError as exc:
        raise FlSimError(str(exc)) from None


def sample_grid(spec: str, n: int, steps: int, seed: int, out_path: Path) -> Path:
    """A PNG grid of ``n`` samples of the prior (DDIM, ``steps`` steps, seeded)."""
    from fl_sim.experiments.prior_train import save_grid

    p = prior_or_error(spec)
    save_grid(p.sample(n, steps=steps, generator=torch.Generator().manual_seed(seed)), out_path)
    return out_path


def prior_report(spec: str, images: int, memo: bool = True,
                 step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """`fl-sim prior eval`: the prior as a denoiser on ``images`` held-out photos, its load time, memorisation.
    ``step(done, total)``: parts done (each noise level, then memorisation)."""
    from fl_sim.core.data.base import to_tensor
    from fl_sim.core.data.synthfaces import open_synthfaces

    t0 = time.time()
    p = prior_or_error(spec)
    load_s = time.time() - t0
    total = len(SIGMAS) + memo
    if step:
        step(0, total)
    res = evaluate_prior(p, heldout_images(p.size, images), on_level=(lambda n: step(n, total)) if step else None)
    res["load_seconds"] = round(load_s, 2)
    if memo:
        ds = open_synthfaces("prior")
        train = to_tensor(np.stack([ds.photos_uint8(u.user)[0] for u in ds.users()[:2000]]), p.size)
        res["memorization"] = memorization(p, train)
        if step:
            step(total, total)
    res["prior"] = spec
    return res
