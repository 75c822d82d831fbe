"""Inversion methods (a registry): dlg, ig, diffusion — observations in, representative images out."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from attacks.labels import InferredLabels, infer_labels
from attacks.matching import candidate_gradients, cosine_distance, l2_distance, total_variation
from attacks.observation import Observation
from attacks.priors import DiffusionPrior
from attacks.registry import Named


@dataclass(frozen=True)
class AttackConfig:
    """Shared knobs; each method reads the ones it uses. Each method registers its own measured
    defaults (``method_config``); the values here are only the base they override (docs/BENCHMARKS.md)."""

    iterations: int = 400
    lr: float = 0.05
    restarts: int = 1
    tv: float = 1e-2  # ig: total-variation weight (relative to the cosine distance)
    init: str = "zeros"  # zeros | randn
    lr_decay: bool = True  # Inverting Gradients' step decay: x0.1 at 3/8, 5/8 and 7/8 of the iterations
    # diffusion (score distillation, SCIENCE.md §2 construction (a))
    t_max: int = 600
    t_min: int = 50
    window: int = 100
    prior_weight: float = 0.3  # λ: ratio of the unit-normalised prior and matching pixel gradients
    construction: str = "sds"  # sds | latent
    projection_t: int = 0  # >0: finish by re-noising to this t and denoising (DDIM)
    prior_every: int = 1  # query the prior every k-th iteration and hold its gradient in between
    fedavg: str = "pseudo"  # FedAvg updates: pseudo (match Δ/(ηK) as a gradient) | simulate (K local steps)
    seed: int = 0
    # Where the candidates, the model and the matching live (e.g. "cuda"); the noise is drawn on the CPU
    # either way, so a seed gives the same start. Results come back on the CPU.
    device: str = "cpu"


@dataclass
class Reconstruction:
    """One user's (or aggregate's) result: a representative image and what was inferred."""

    method: str
    image: torch.Tensor  # (3, H, W) in [-1, 1]
    labels: dict[str, int]
    label_counts: dict[str, list[float]]
    loss_trace: list[float] = field(default_factory=list)
    seconds: float = 0.0
    final_loss: float = float("nan")


AttackFn = Callable[[list[Observation], DiffusionPrior | None, AttackConfig], list[Reconstruction]]
ATTACKS: Named[AttackFn] = Named("attack method")
DEFAULTS: dict[str, AttackConfig] = {}
# Measured defaults at other image sizes, over the method's own: (method, image side) -> overrides.
SIZE_DEFAULTS: dict[tuple[str, int], dict[str, Any]] = {}


def register_attack(name: str, defaults: AttackConfig | None = None, help: str = "") -> Callable[[AttackFn], AttackFn]:
    """Register a method under ``name`` with its own default config and a one-line help text."""
    def deco(fn: AttackFn) -> AttackFn:
        ATTACKS.add(name, fn, help)
        DEFAULTS[name] = defaults or AttackConfig()
        return fn

    return deco


def method_config(name: str, size: int | None = None, **overrides: Any) -> AttackConfig:
    """The method's registered defaults (those measured at image side ``size``, where there are any) with
    ``overrides`` applied (unknown keys raise)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r} (known: {', '.join(sorted(ATTACKS))})")
    return replace(DEFAULTS[name], **{**SIZE_DEFAULTS.get((name, size or 0), {}), **overrides})


def run_attack(name: str, observations: list[Observation], prior: DiffusionPrior | None = None,
               config: AttackConfig | None = None) -> list[Reconstruction]:
    """Run a registered attack on observations of one round (batched over them)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r} (known: {', '.join(sorted(ATTACKS))})")
    if not observations:
        return []
    return ATTACKS[name](observations, prior, config or DEFAULTS[name])


# -- shared machinery ----------------------------------------------------------------------
@dataclass
class _Problem:
    obs: Observation
    params: dict[str, torch.Tensor]
    targets: list[dict[str, torch.Tensor]]
    labels: torch.Tensor  # (B, heads)
    inferred: list[InferredLabels]
    steps: int = 1  # >1: candidates simulate that many local FedAvg steps


def _problem(observations: list[Observation], cfg: AttackConfig) -> _Problem:
    first = observations[0]
    for o in observations[1:]:
        if o.image_shape != first.image_shape or o.round != first.round:
            raise ValueError("a batched attack needs observations of one round and image shape")
    inferred = [infer_labels(o) for o in observations]
    dev = torch.device(cfg.device)
    params = {k: v.detach().to(dev) for k, v in first.global_params.items()}
    targets = [{k: v.detach().to(dev) for k, v in o.gradient().items()} for o in observations]
    labels = torch.stack([inf.as_tensor(first.heads) for inf in inferred]).to(dev)
    if dev.type != "cpu":  # the model's buffers (norm statistics) join its parameters; the caller's model stays
        first = replace(first, model=copy.deepcopy(first.model).to(dev))
    if cfg.fedavg not in ("pseudo", "simulate"):
        raise ValueError(f"fedavg mode {cfg.fedavg!r} is not pseudo or simulate")
    steps = first.local_steps if cfg.fedavg == "simulate" and first.protocol == "fedavg" else 1
    if steps > 1 and any(o.local_steps != steps for o in observations):
        raise ValueError("simulating FedAvg in one batch needs observations with the same number of local steps")
    return _Problem(first, params, targets, labels, inferred, steps)


def _init(n: int, shape: tuple[int, int, int], cfg: AttackConfig, restart: int) -> torch.Tensor:
    if cfg.init == "zeros" and restart == 0:
        return torch.zeros(n, *shape).to(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + restart)
    return (torch.randn((n, *shape), generator=gen) * 0.5).clamp(-1, 1).to(cfg.device)


def _results(method: str, pb: _Problem, best_x: torch.Tensor, best_loss: torch.Tensor,
             traces: list[list[float]], t0: float) -> list[Reconstruction]:
    secs = (time.time() - t0) / len(pb.targets)
    return [Reconstruction(method=method, image=best_x[b].detach().clamp(-1, 1).cpu(), labels=pb.inferred[b].labels,
                           label_counts=pb.inferred[b].counts, loss_trace=traces[b], seconds=secs,
                           final_loss=float(best_loss[b])) for b in range(len(pb.targets))]


def _optimise(method: str, observations: list[Observation], cfg: AttackConfig,
              objective: Callable[[_Problem, torch.Tensor], torch.Tensor],
              step_hook: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
              signed: bool = False) -> list[Reconstruction]:
    """Adam on the pixels of all users' candidates at once; restarts keep each user's best."""
    t0 = time.time()
    pb = _problem(observations, cfg)
    n = len(observations)
    best_x = torch.zeros(n, *pb.obs.image_shape, device=cfg.device)
    best_loss = torch.full((n,), float("inf"), device=cfg.device)
    traces: list[list[float]] = [[] for _ in range(n)]
    for r in range(cfg.restarts):
        x = _init(n, pb.obs.image_shape, cfg, r).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=cfg.lr)
        milestones = [int(cfg.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)] if cfg.lr_decay else []
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        for it in range(cfg.iterations):
            opt.zero_grad(set_to_none=True)
            loss = objective(pb, x)
            loss.sum().backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            assert x.grad is not None
            if step_hook is not None:
                x.grad = step_hook(it, x.detach(), x.grad)
            elif signed:
                x.grad = x.grad.sign()  # Inverting Gradients' signed Adam
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(-1, 1)  # box constraint: images live in [-1, 1]
            for b, v in enumerate(loss.detach()):
                traces[b].append(float(v))
        with torch.no_grad():
            final = _matching(pb, x.detach(), cosine=True)
            better = final < best_loss
            best_loss = torch.where(better, final, best_loss)
            best_x[better] = x.detach()[better]
    return _results(method, pb, best_x, best_loss, traces, t0)


def _matching(pb: _Problem, x: torch.Tensor, cosine: bool) -> torch.Tensor:
    cand = candidate_gradients(pb.obs, pb.params, x, pb.labels, pb.steps)
    return cosine_distance(cand, pb.targets) if cosine else l2_distance(cand, pb.targets)


# -- methods -------------------------------------------------------------------------------
@register_attack("dlg", AttackConfig(init="randn", tv=0.0),
                 help="Deep Leakage from Gradients: L2 gradient matching from noise")
def dlg(observations: list[Observation], prior: DiffusionPrior | None, cfg: AttackConfig) -> list[Reconstruction]:
    """Deep Leakage from Gradients (with iDLG's inferred labels): L2 gradient matching from noise."""
    return _optimise("dlg", observations, cfg, lambda pb, x: _matching(pb, x, cosine=False))


# ig: lr and TV swept on 20 users at rounds 0 and 5 (docs/BENCHMARKS.md); signed Adam, zeros start.
@register_attack("ig", AttackConfig(lr=0.1, tv=0.05), help="Inverting Gradients: cosine matching + total variation")
def inverting_gradients(observations: list[Observation], prior: DiffusionPrior | None,
                        cfg: AttackConfig) -> list[Reconstruction]:
    """Inverting Gradients: cosine distance + total variation, signed Adam, box constraint, restarts."""
    return _optimise("ig", observations, cfg,
                     lambda pb, x: _matching(pb, x, cosine=True) + cfg.tv * total_variation(x), signed=True)


def sliding_window(iterations: int, t_max: int, t_min: int, window: int) -> list[tuple[int, int]]:
    """Per iteration, the window [lo, hi] of timesteps: hi descends linearly from t_max to t_min."""
    out = []
    for k in range(iterations):
        hi = round(t_max - (t_max - t_min) * k / max(iterations - 1, 1))
        out.append((max(hi - window, 0), hi))
    return out


# diffusion: lr, λ, schedule, projection and prior_every swept the same way; the prior is queried
# every 4th iteration (costs ≤ 2x ig per iteration; quality within noise of every iteration).
@register_attack("diffusion", AttackConfig(lr=0.1, prior_weight=0.4, prior_every=4),
                 help="gradient matching guided by a diffusion prior (attack.prior)")
def diffusion(observations: list[Observation], prior: DiffusionPrior | None,
              cfg: AttackConfig) -> list[Reconstruction]:
    """User-level inversion under a diffusion prior (seed 1), score-distillation construction.

    Each step blends the matching gradient and the prior's score-distillation gradient
    ε̂(x_t, t) − ε, each normalised to unit length per image (λ is then a ratio), with t drawn
    from a window that slides from t_max down to t_min: coarse structure first, detail last.
    """
    if prior is None:
        raise ValueError("the diffusion attack needs a prior")
    if cfg.construction == "latent":
        return _diffusion_latent(observations, prior, cfg)
    windows = sliding_window(cfg.iterations, cfg.t_max, cfg.t_min, cfg.window)
    gen = torch.Generator().manual_seed(cfg.seed)
    size = observations[0].image_shape[-1]

    def unit(g: torch.Tensor) -> torch.Tensor:
        scaled: torch.Tensor = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return scaled

    held: list[torch.Tensor] = []

    def hook(it: int, x: torch.Tensor, g_match: torch.Tensor) -> torch.Tensor:
        if it % max(cfg.prior_every, 1) == 0 or not held:
            lo, hi = windows[it]
            t = torch.randint(lo, hi + 1, (x.shape[0],), generator=gen).to(prior.device)
            xp = prior.to_prior(x).to(prior.device)
            noise = torch.randn(xp.shape, generator=gen).to(prior.device)
            with torch.inference_mode():
                g_prior = prior.eps(prior.add_noise(xp, t, noise), t) - noise
            held[:] = [unit(prior.from_prior(g_prior.to(x.device), size))]
        return unit(g_match) + cfg.prior_weight * held[0]

    recs = _optimise("diffusion", observations, cfg, lambda pb, x: _matching(pb, x, cosine=True), step_hook=hook)
    if cfg.projection_t > 0:
        recs = _project(recs, prior, cfg.projection_t, size)
    return recs


# 64x64 (faces64), calibrated on 20 users outside the bench's candidates (docs/BENCHMARKS.md): twice the
# iterations lifted re-identification most; a larger λ helped a little; querying the prior every 8th
# iteration cost nothing in quality and keeps diffusion under 2x ig per iteration. ig gets the same budget.
SIZE_DEFAULTS[("diffusion", 64)] = {"iterations": 800, "prior_weight": 0.8, "prior_every": 8}
SIZE_DEFAULTS[("ig", 64)] = {"iterations": 800}


def _project(recs: list[Reconstruction], prior: DiffusionPrior, t: int, size: int) -> list[Reconstruction]:
    """Re-noise to t and denoise: pulls each result onto the prior's image manifold."""
    x = prior.to_prior(torch.stack([r.image for r in recs])).to(prior.device)
    ab = prior.alpha_bar(t)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).to(prior.device)
    out = prior.from_prior(prior.ddim(ab.sqrt() * x + (1 - ab).sqrt() * noise, t, steps=20).cpu(), size)
    return [replace(r, image=out[i]) for i, r in enumerate(recs)]


def _diffusion_latent(observations: list[Observation], prior: DiffusionPrior, cfg: AttackConfig) -> list[Reconstruction]:
    """Construction (b): optimise x_t at the current t, match on x̂0 = decode(x_t), DDIM-step down the window."""
    t0 = time.time()
    pb = _problem(observations, cfg)
    n, size = len(observations), observations[0].image_shape[-1]
    ts = prior.timesteps(cfg.t_max, max(2, cfg.iterations // 10))
    per_t = max(1, cfg.iterations // len(ts))
    gen = torch.Generator().manual_seed(cfg.seed)
    x_t = torch.randn((n, 3, prior.size, prior.size), generator=gen).to(prior.device) * float(
        (1 - prior.alpha_bar(ts[0])).sqrt())
    traces: list[list[float]] = [[] for _ in range(n)]
    for i, t in enumerate(ts):
        x_t = x_t.detach().requires_grad_(True)
        opt = torch.optim.Adam([x_t], lr=cfg.lr)
        for _ in range(per_t):
            opt.zero_grad(set_to_none=True)
            x0 = prior.from_prior(prior.x0(x_t, t).to(cfg.device), size)
            loss = _matching(pb, x0, cosine=True)
            loss.sum().backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            opt.step()
            for b, v in enumerate(loss.detach()):
                traces[b].append(float(v))
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        with torch.no_grad():
            x_t = prior.ddim_step(x_t.detach(), t, t_prev).prev_sample
    x = prior.from_prior(x_t.detach().to(cfg.device), size).clamp(-1, 1)
    with torch.no_grad():
        final = _matching(pb, x, cosine=True)
    return _results("diffusion", pb, x, final, traces, t0)
