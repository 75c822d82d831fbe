"""Imprint ("Robbing the Fed", Fowl et al. 2022): a malicious block whose gradient holds the client's photos."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attacks.priors.diffusion import DiffusionPrior

Shape = tuple[int, int, int]


def measurement_vector(shape: Shape, kind: str = "random", seed: int = 0) -> torch.Tensor:
    """A unit-norm measurement ``m`` over flattened images of ``shape``; every imprint unit reads ``mᵀx``.

    ``random`` (default): a seeded Gaussian direction. ``mean``: mean intensity (all ones, normalised).
    Random is the default because the client's batch here is one person's photos: their mean brightness
    is nearly constant (same face, same lighting), so a brightness ladder drops most of them into a few
    bins, while a random direction also sees pose, background and expression (on the embedded faces, one
    user's 32 photos: 48 % alone in a bin with brightness, 50–60 % with random directions, at 4 bins per photo).
    """
    d = math.prod(shape)
    if kind == "mean":
        m = torch.ones(d, dtype=torch.float64)
    elif kind == "random":
        m = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    else:
        raise ValueError(f"unknown measurement {kind!r} (known: random, mean)")
    unit: torch.Tensor = m / m.norm()
    return unit


def spread_direction(groups: list[torch.Tensor], rank: int = 64) -> torch.Tensor:
    """A unit measurement along which one person's photos spread most relative to how people differ, from public
    faces grouped by identity (each group: (n_i, ...), n_i >= 2): argmax_m mᵀS_w m / mᵀ(S_w + S_b) m, with S_w the
    within-identity and S_b the between-identity scatter, solved in the top-``rank`` principal components.

    Why: a client's batch here is one person's photos, so the bins (set from many people) must split *them*; along a
    random direction most of the spread is between people and one user's photos crowd into a few bins."""
    flat = [g.flatten(1).double() for g in groups if len(g) >= 2]
    if len(flat) < 2:
        raise ValueError("a spread direction needs at least two identities with two photos or more")
    means = torch.stack([g.mean(0) for g in flat])
    within = torch.cat([g - g.mean(0, keepdim=True) for g in flat])
    between = means - means.mean(0, keepdim=True)
    allx = torch.cat(flat)
    q = min(rank, allx.shape[0] - 1, allx.shape[1])
    _, _, basis = torch.pca_lowrank(allx - allx.mean(0, keepdim=True), q=q, center=False)
    w, b = within @ basis, between @ basis
    s_w, s_b = w.T @ w / len(w), b.T @ b / len(b)
    # A ridge of 1 % of the mean variance: a direction where nobody's photos vary at all is no use (its bins would
    # split pixel noise), however pure its little variation is.
    total = s_w + s_b
    ridge = 0.01 * float(torch.trace(total)) / q
    chol = torch.linalg.cholesky(total + ridge * torch.eye(q, dtype=torch.float64))
    inv = torch.linalg.inv(chol)
    _, vecs = torch.linalg.eigh(inv @ s_w @ inv.T)
    m = basis @ (inv.T @ vecs[:, -1])
    m = m if float(m.sum()) >= 0 else -m  # a fixed sign: the same block for the same faces
    unit: torch.Tensor = m / m.norm()
    return unit


def bin_thresholds(public: torch.Tensor, measurement: torch.Tensor, bins: int) -> torch.Tensor:
    """``bins`` ascending thresholds of ``mᵀx`` from public images (N, ...): what the server can know.

    Threshold i is the i/bins quantile of the public measurements, so every bin is equally likely for an
    image drawn like the public ones — the spacing that maximises the chance a photo is alone in its bin.
    The lowest is moved one public range below the public minimum: unit 0 then fires for every image, so
    photos darker (along ``m``) than anything public still land in a readable bin instead of no unit at all.
    """
    if bins < 2:
        raise ValueError("an imprint needs at least 2 bins")
    values = public.flatten(1).double() @ measurement.double()
    levels = torch.arange(bins, dtype=torch.float64) / bins
    c = torch.quantile(values, levels)
    c[0] = values.min() - (values.max() - values.min()).clamp_min(1e-6)
    return c


def imprint_parameters(
    shape: Shape,
    bins: int,
    thresholds: torch.Tensor,
    measurement: torch.Tensor | str = "random",
    seed: int = 0,
    gain: float = 0.03,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The malicious ``(W, b)`` of the block's first layer: ``W`` (bins, d), ``b`` (bins,), float32.

    Every row of ``W`` is the same measurement ``m`` and ``b_i = −c_i`` (``thresholds`` ascending, in units
    of ``mᵀx``), so unit i is ``relu(mᵀx − c_i)``: "on" for every image above threshold i (cumulative bins).
    Both are divided by the threshold span and multiplied by ``gain``, so activations are O(gain) whatever
    the measurement's scale; the read-out ``x = ΔW_i / Δb_i`` does not depend on that scale.

    Why a small gain: ∂L/∂W does not depend on it (∂L/∂W_i = g·x), so it only sets how big W is next to
    its update. With the block's ``scale`` s, the brightness shift the model sees grows with s·gain and
    the update's relative size with s/gain: too small and the float32 difference ``W_before − W_after``
    loses the photo's digits, too large and the rows drift during local training and move the bins.
    What matters is a photo's share of the update, about η·s/(gain·b) for client lr η and (mini-)batch b.
    Measured on one user's 32 face photos (128 bins), FedAvg with 4 SGD steps of 8 at η = 0.01: s/gain = 1
    recovers ~0.77 whether s = gain = 0.03 or 0.3; s/gain = 10 0.71, 100 0.45 (drift); 0.01 a quarter,
    0.001 nothing (precision). A single full-batch step (FedSGD shipped as θ − θ') has no drift, so there
    larger is better: batch 100, s/gain = 1 gives 0.60, s/gain ≥ 10 0.76 (as the exact gradient).
    The defaults, s = gain = 0.03, suit multi-step updates at η ≈ 0.01 and keep the shift ~1e-3, under one
    8-bit grey level; raise ``scale`` for single-step updates of large batches.
    """
    d = math.prod(shape)
    c = thresholds.double().flatten()
    if c.numel() != bins:
        raise ValueError(f"{bins} bins need {bins} thresholds, got {c.numel()}")
    if bool((c[1:] <= c[:-1]).any()):
        raise ValueError("thresholds must be strictly ascending (recover reads units in that order)")
    m = measurement_vector(shape, measurement, seed) if isinstance(measurement, str) else measurement.double().flatten()
    if m.numel() != d:
        raise ValueError(f"measurement has {m.numel()} entries, images have {d}")
    span = float(c[-1] - c[1]) if bins > 2 else float(c[-1] - c[0])
    k = gain / max(span, 1e-12)
    weight = (k * m)[None, :].expand(bins, d).clone()
    bias = -k * c
    return weight.float(), bias.float()


class ImprintBlock(nn.Module):
    """A block in front of the shared model: ``y = x + s·(mean_i h_i − offset)·1``, ``h = relu(W·flat(x) + b)``.

    The block returns an image of the input's shape, so the model behind it is unchanged and trains as
    before; the only trace is a uniform brightness shift ``scale``·(mean activation − ``offset``), about
    1e-3 with the defaults (``imprint_parameters``' docstring says how ``scale`` and ``gain`` were chosen).
    The way back to image space is deliberately one fixed vector (a buffer, not a parameter) shared by all
    units: then ∂L/∂h_i is the same number ``g = (s/k)·Σ_pixels ∂L/∂y`` for every unit of one image,
    so ``∇W_i = Σ_{j: unit i on} g_j x_j`` and ``∇b_i = Σ_{j: unit i on} g_j`` — exactly what ``recover``
    differences. A trainable read-out (a ``Linear(k, d)``) would drift apart column by column during local
    training and break that equality; a fixed one keeps it through any number of FedAvg steps.
    """

    def __init__(
        self,
        shape: Shape,
        bins: int,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        scale: float = 0.03,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        self.shape = shape
        d = math.prod(shape)
        self.imprint = nn.Linear(d, bins)
        with torch.no_grad():
            if weight is not None:
                self.imprint.weight.copy_(weight)
            if bias is not None:
                self.imprint.bias.copy_(bias)
        self.readout: torch.Tensor
        self.register_buffer("readout", torch.full((d,), float(scale)))
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.imprint(x.flatten(1)))
        shift = (h.mean(dim=1, keepdim=True) - self.offset) * self.readout
        return x + shift.view_as(x)


@dataclass(frozen=True)
class ImprintRecovery:
    """Candidates read from an imprint gradient: one per non-empty bin, in bin order.

    ``bins[n]`` is the unit whose bin gave ``images[n]``; ``weights[n]`` the bin's summed loss gradient
    ``Σ g_j`` (its size says how clearly the bin spoke); ``mixed[n]`` is True when the candidate cannot be
    one photo (pixels outside the valid range): a blend of photos whose gradients have opposite signs.
    A blend of same-sign photos stays in range and is not flagged — the test is one-sided.
    """

    images: torch.Tensor
    bins: torch.Tensor
    weights: torch.Tensor
    mixed: torch.Tensor


def recover_bins(
    grad_weight: torch.Tensor,
    grad_bias: torch.Tensor,
    shape: Shape | None = None,
    rel_tol: float = 1e-5,
    valid: tuple[float, float] = (-1.0, 1.0),
    range_tol: float = 0.05,
) -> ImprintRecovery:
    """Read photos out of the imprint layer's gradient (units in ascending threshold order, as built).

    Unit i's gradient sums over every photo above threshold i; unit i minus unit i+1 leaves the photos
    between the two thresholds, ``ΔW_i = Σ_{j in bin i} g_j x_j`` and ``Δb_i = Σ_{j in bin i} g_j``, so
    ``ΔW_i / Δb_i`` is that photo exactly when the bin holds one, and the g-weighted mean of its photos
    when it holds several. A bin whose ``|Δb_i|`` is below ``rel_tol`` × the largest unit's ``|∇b|`` is
    empty (rounding noise of the cumulative sums, not a photo) and yields nothing. Works in float64.
    ``shape`` defaults to a square RGB image of the row length.
    """
    gw = grad_weight.detach().double().flatten(1)
    gb = grad_bias.detach().double().flatten()
    if gw.shape[0] != gb.numel():
        raise ValueError(f"{gw.shape[0]} weight rows but {gb.numel()} bias entries")
    d = gw.shape[1]
    if shape is None:
        side = math.isqrt(d // 3)
        if 3 * side * side != d:
            raise ValueError(f"rows of {d} values are not a square RGB image; pass shape")
        shape = (3, side, side)
    elif math.prod(shape) != d:
        raise ValueError(f"shape {shape} has {math.prod(shape)} values, rows have {d}")
    # The last unit has no neighbour above: its bin is everything over the top threshold.
    dw = gw - torch.cat([gw[1:], torch.zeros_like(gw[:1])])
    db = gb - torch.cat([gb[1:], torch.zeros_like(gb[:1])])
    floor = rel_tol * float(gb.abs().max()) if gb.numel() else 0.0
    keep = torch.nonzero(db.abs() > max(floor, 1e-300)).flatten()
    images = (dw[keep] / db[keep, None]).reshape(len(keep), *shape)
    lo, hi = valid
    flat = images.flatten(1)
    mixed = (flat.amin(1) < lo - range_tol) | (flat.amax(1) > hi + range_tol) if len(keep) else torch.zeros(0, dtype=torch.bool)
    return ImprintRecovery(images.float(), keep, db[keep].float(), mixed)


def recover(
    grad_weight: torch.Tensor,
    grad_bias: torch.Tensor,
    shape: Shape | None = None,
    rel_tol: float = 1e-5,
) -> torch.Tensor:
    """Candidate photos (n, 3, H, W), one per non-empty bin (see ``recover_bins`` for which are mixed)."""
    return recover_bins(grad_weight, grad_bias, shape, rel_tol).images


def update_as_gradient(before: torch.Tensor, after: torch.Tensor, lr: float) -> torch.Tensor:
    """FedAvg: read ``(before − after) / lr`` as a gradient — the sum of the local steps' gradients.

    An approximation: each local step's gradient has the cumulative structure, and a photo seen in
    several steps still sits in one bin, so ``ΔW_i / Δb_i`` stays ``Σ_t g_jt x_j / Σ_t g_jt = x_j``
    for a lone photo — as long as the imprint layer itself barely moves (its rows drift with training,
    shifting thresholds) and the float32 difference keeps enough digits (small steps lose precision).
    """
    return (before.double() - after.double()) / lr


def clean_with_prior(images: torch.Tensor, prior: DiffusionPrior, noise_std: float, steps: int = 25,
                     seed: int = 0) -> torch.Tensor:
    """Mixed candidates pulled back onto the face manifold (SDEdit-style): each image, clamped to the valid range,
    is read as a face plus Gaussian noise of std ``noise_std``, noised to the matching diffusion step and denoised
    with ``steps`` DDIM steps of the prior. Same size in and out; deterministic for a ``seed``."""
    if not len(images):
        return images
    t = prior.t_for_noise_std(noise_std)
    if t is None:
        raise ValueError(f"noise std {noise_std} is beyond the prior's schedule")
    size = images.shape[-1]
    with torch.no_grad():
        x0 = prior.to_prior(images.float().clamp(-1, 1).to(prior.device))
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(prior.device)
        out = prior.ddim(prior.add_noise(x0, t, noise), t, steps)
    return prior.from_prior(out.clamp(-1, 1), size).cpu()
