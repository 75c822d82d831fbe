"""Visual privacy audit of DP-SGD: informed-adversary extraction, diffusion reconstruction, metrics and bounds vs μ."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.priors import DiffusionPrior
from fl_sim.core.errors import FlSimError
from fl_sim.experiments.prior_eval import psnr
from fl_sim.core.scoring import ssim

DELTA = 1e-5
METHODS = ("raw", "classical", "diffusion")


# -- the base attack ----------------------------------------------------------------------
def extract_first_layer(grad_weight: torch.Tensor, grad_bias: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One sample's input from its gradient of a fully connected first layer with bias.

    For unit i, ∂ℓ/∂W_i = ∂ℓ/∂b_i · xᵀ, so x = ∇W_i / ∇b_i for any unit with ∇b_i ≠ 0; the unit
    with the largest |∇b_i| is the best conditioned. Returns (x, i).
    """
    i = int(grad_bias.abs().argmax())
    if float(grad_bias[i]) == 0.0:
        raise FlSimError("extraction: every bias gradient is zero (the sample did not reach the first layer)")
    return grad_weight[i] / grad_bias[i], i


def clip_and_noise(grads: Sequence[torch.Tensor], clip: float, noise_multiplier: float,
                   generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """DP-SGD on one sample's gradient: scale the whole gradient to norm ≤ C, add N(0, (zC)²) to every entry.

    Returns (noisy, clipped): the released gradient and the clipped one before noise.
    """
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    scale = min(1.0, clip / max(norm, 1e-12))
    clipped = [g * scale for g in grads]
    std = noise_multiplier * clip
    noisy = [c + std * torch.randn(c.shape, generator=generator, dtype=c.dtype) for c in clipped]
    return noisy, clipped


def noise_std(x: torch.Tensor, mu: float) -> torch.Tensor:
    """Per-image std s of the extracted image's noise, under the defender's worst case.

    Model. The informed adversary knows every other sample of the batch and subtracts their
    gradients, leaving the target's clipped gradient g plus N(0, σ²I), σ = zC = C/μ. The worst case
    for the defender is a gradient entirely in one unit's row of the first layer:
    g = β·[x, 1] with ‖g‖ = C, so |β| = C/‖[x, 1]‖. The adversary reads the noisy row and divides
    by β (it is granted the clean bias gradient — one scalar; dividing by the noisy bias instead
    only adds error, which would favour the defender), so

        y = (β x + n) / β = x + n/β,   n ~ N(0, σ² I)   ⇒   s = σ/|β| = ‖[x, 1]‖ / μ.

    Any gradient mass outside that row makes |β| smaller and s larger, so this s is a lower bound
    on the noise DP-SGD leaves in a real network (tested on a real net in tests/test_audit.py).
    """
    if mu <= 0 or not math.isfinite(mu):
        raise FlSimError(f"--mu: expected positive finite values, got {mu}")
    return (x.flatten(1).pow(2).sum(1) + 1.0).sqrt() / mu


def estimate_noise_std(y: torch.Tensor, mu: float) -> torch.Tensor:
    """s from the observation alone (the adversary does not know ‖x‖).

    E‖y‖² = ‖x‖² + d s² and μ² s² = ‖x‖² + 1 give s² = (‖y‖² + 1)/(μ² + d); with d = 3072 pixels
    the estimate is within a percent or so.
    """
    d = y[0].numel()
    return ((y.flatten(1).pow(2).sum(1) + 1.0) / (mu * mu + d)).sqrt()


def observe(x: torch.Tensor, mu: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The adversary's noisy image y = x + N(0, s² I) with s = ‖[x, 1]‖/μ (see `noise_std`)."""
    s = noise_std(x, mu).view(-1, 1, 1, 1)
    return x + s * torch.randn(x.shape, generator=generator, dtype=x.dtype)


# -- privacy accounting and the bound ------------------------------------------------------
def _phi(v: float) -> float:
    return 0.5 * math.erfc(-v / math.sqrt(2.0))


def gdp_delta(eps: float, mu: float) -> float:
    """δ(ε) of μ-GDP (Dong, Roth, Su 2019): Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), in log space for large ε."""
    from scipy.stats import norm

    a = float(norm.cdf(-eps / mu + mu / 2))
    b = math.exp(eps + float(norm.logcdf(-eps / mu - mu / 2)))
    return a - b


def eps_for_mu(mu: float, delta: float = DELTA, *, steps: int = 1, sample_rate: float = 1.0) -> float:
    """ε at δ for noise multiplier z = 1/μ.

    steps = 1 and sample_rate = 1: one release of the Gaussian mechanism, the exact GDP curve solved
    for ε. Otherwise Opacus's RDP accountant for ``steps`` Poisson-subsampled steps.
    """
    if mu <= 0:
        raise FlSimError(f"--mu: expected positive values, got {mu}")
    if steps == 1 and sample_rate == 1.0:
        from scipy.optimize import brentq

        if gdp_delta(0.0, mu) <= delta:
            return 0.0
        hi = 1.0
        while gdp_delta(hi, mu) > delta:
            hi *= 2
        return float(brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, hi, xtol=1e-10))
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(1.0 / mu, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


def rero_bound(mu: float, kappa: float) -> float:
    """Reconstruction-robustness bound for μ-GDP: success ≤ Φ(μ + Φ⁻¹(κ)); κ at μ = 0."""
    from scipy.stats import norm

    if kappa <= 0.0:
        return 0.0
    if kappa >= 1.0:
        return 1.0
    return float(norm.cdf(mu + norm.ppf(kappa)))


def baseline_kappa(successes: int, trials: int) -> tuple[float, str]:
    """κ = successes/trials; with no success, the one-sided 95% upper limit 1 − 0.05^(1/n), so the
    bound does not collapse to 0 on a finite sample (a conservative choice: it raises the bound)."""
    if trials <= 0:
        raise FlSimError("kappa: no (prior sample, target) pairs to estimate it from")
    if successes == 0:
        return 1.0 - 0.05 ** (1.0 / trials), f"0/{trials} pairs succeeded: 95% upper limit"
    return successes / trials, f"{successes}/{trials} (prior sample, target) pairs"


# -- the classical baseline ----------------------------------------------------------------
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
    x = ab_all[t0.long()].sqrt().view(-1, 1, 1, 1).float() * y
    for i in range(steps):
        t = torch.round(t0 * (1 - i / steps)).long()
        last = i + 1 == steps
        t_prev = torch.round(t0 * (1 - (i + 1) / steps)).long()
        _, x0 = prior.predict(x, t)
        x0 = x0.clamp(-1, 1)
        ab_t = ab_all[t]
        if dc > 0:
            r = (1 - ab_t) / ab_t
            w = (dc * r / (r + s2)).view(-1, 1, 1, 1).float()
            x0 = (x0 + w * (y - x0)).clamp(-1, 1)
        if last:
            x = x0
            break
        ab_p = ab_all[t_prev]
        a_t, a_p = ab_t.view(-1, 1, 1, 1).float(), ab_p.view(-1, 1, 1, 1).float()
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).clamp_min(1e-12).sqrt()
        sig = eta * ((1 - a_p) / (1 - a_t).clamp_min(1e-12) * (1 - a_t / a_p)).clamp_min(0).sqrt()
        x = a_p.sqrt() * x0 + (1 - a_p - sig ** 2).clamp_min(0).sqrt() * eps
        if eta > 0:
            x = x + sig * torch.randn(x.shape, generator=generator).to(dev)
    return x.view(k, -1, *x.shape[1:]).mean(0).clamp(-1, 1).cpu()


# -- evaluation -------------------------------------------------------------------------------
def equal_error_threshold(same: np.ndarray, diff: np.ndarray) -> float:
    """The similarity at which the same-identity miss rate equals the different-identity accept rate."""
    cands = np.unique(np.concatenate([same, diff]))
    miss = np.searchsorted(np.sort(same), cands, side="left") / len(same)          # same < thr
    accept = 1.0 - np.searchsorted(np.sort(diff), cands, side="left") / len(diff)  # diff >= thr
    return float(cands[int(np.argmin(np.abs(miss - accept)))])


@dataclass
class FaceCalibration:
    """The identity evaluator's same-identity threshold and the unrelated-photo similarity."""

    threshold: float
    unrelated_similarity: float
    same_mean: float
    how: str


def face_calibration(photos: list[torch.Tensor]) -> FaceCalibration:
    """From several photos of each of several users (not the audited photos): the equal-error threshold
    between same-user and different-user SFace similarities, and the mean different-user similarity."""
    from fl_sim.core.evaluators.face import sface

    embs = [sface().embed(p) for p in photos]
    same, diff = [], []
    for i, e in enumerate(embs):
        s = e @ e.T
        same.append(s[np.triu_indices(len(e), 1)])
        for f in embs[i + 1:]:
            diff.append((e @ f.T).ravel())
    same_a, diff_a = np.concatenate(same), np.concatenate(diff)
    thr = equal_error_threshold(same_a, diff_a)
    return FaceCalibration(threshold=thr, unrelated_similarity=float(diff_a.mean()), same_mean=float(same_a.mean()),
                           how=f"equal-error threshold of SFace similarity between {len(same_a)} same-user and "
                               f"{len(diff_a)} different-user photo pairs ({len(photos)} users, audited photos excluded)")


def _nn_identified(recon: torch.Tensor, originals: torch.Tensor) -> np.ndarray:
    d = torch.cdist(recon.flatten(1).double(), originals.flatten(1).double())
    return (d.argmin(1) == torch.arange(len(recon))).numpy()


def _per_image_ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return np.array([ssim(a[i:i + 1], b[i:i + 1]) for i in range(len(a))])


def unrelated_ssim(originals: torch.Tensor) -> float:
    """Mean SSIM between different audited images: the 'tells nothing' line when there are no faces."""
    vals = [ssim(originals[i:i + 1], originals[j:j + 1]) for i in range(len(originals)) for j in range(len(originals)) if i != j]
    return float(np.mean(vals)) if vals else float("nan")


# -- the audit ----------------------------------------------------------------------------------
@dataclass
class AuditSettings:
    """Everything an audit needs besides the μ list; defaults are the measured ones (docs/AUDIT.md)."""

    data: str = "synthfaces:users"
    prior: str = "faces32"
    images: int = 16
    seed: int = 0
    ddim_steps: int = 10
    dc: float = 0.0
    samples: int = 8
    eta: float = 1.0
    kappa_samples: int = 32
    calibration: str | None = None  # classical filter's images; default: the data's prior/train split
    steps: int = 1                  # DP-SGD steps for the ε label (1 with sample_rate 1: one Gaussian release)
    sample_rate: float = 1.0
    delta: float = DELTA


@dataclass
class AuditResult:
    """Rows per (μ, method), the bound per μ, the unrelated line, and images for the panel."""

    rows: list[dict[str, Any]]
    rero_bound: list[dict[str, Any]]
    unrelated_similarity: float
    meta: dict[str, Any]
    originals: torch.Tensor
    reconstructions: dict[float, torch.Tensor | None] = field(default_factory=dict)
    observations: dict[float, torch.Tensor] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "rero_bound": self.rero_bound, "unrelated_similarity": self.unrelated_similarity,
                **self.meta}


def calibration_spec(data: str) -> str:
    """The split the audited data's prior would be trained on: the classical filter is fitted there."""
    kind, _, arg = data.partition(":")
    if kind == "synthfaces":
        return "synthfaces:prior"
    if kind in ("mnist", "fashion-mnist"):
        split, _, root = arg.partition(":")
        return f"{kind}:train:{root}" if root else kind
    return data


def validate(mus: Sequence[float], images: int) -> None:
    """One-line errors for the values a user types."""
    if not mus:
        raise FlSimError("--mu: give at least one value, e.g. --mu 1,2,4,8")
    bad = [m for m in mus if not (m > 0 and math.isfinite(m))]
    if bad:
        raise FlSimError(f"--mu: expected positive finite values, got {bad[0]}")
    if images < 1:
        raise FlSimError(f"--images: expected at least 1, got {images}")


def audit_targets(ds: Any, n: int, size: int) -> tuple[torch.Tensor, list[dict[str, str | None]], list[str]]:
    """n audited photos: user i mod U, counting photos from the last, so photos 0..7 stay for calibration."""
    from fl_sim.core.data.base import to_tensor

    users = ds.users()
    if not users:
        raise FlSimError(f"dataset {ds.spec} has no users")
    per_user: dict[str, np.ndarray] = {}
    imgs, attrs, who = [], [], []
    for i in range(n):
        rec = users[i % len(users)]
        if rec.user not in per_user:
            per_user[rec.user] = ds.photos_uint8(rec.user)
        k = i // len(users)
        if k >= len(per_user[rec.user]):
            raise FlSimError(f"--images {n}: dataset {ds.spec} has too few photos per user for that many")
        imgs.append(per_user[rec.user][-1 - k])
        attrs.append(dict(rec.attributes))
        who.append(rec.user)
    return to_tensor(np.stack(imgs), size), attrs, who


def _calibration_photos(ds: Any, size: int, audited_users: int, per_user: int = 8, n_users: int = 30) -> list[torch.Tensor]:
    """Photos 0..per_user-1 of users spread over the dataset (the audited photos are the last ones)."""
    from fl_sim.core.data.base import to_tensor

    users = [u for u in ds.users() if u.n_photos > per_user]
    step = max(1, len(users) // n_users)
    return [to_tensor(ds.photos_uint8(u.user)[:per_user], size) for u in users[::step][:n_users]]


def _calibration_images(ds: Any, size: int, n: int = 2000) -> torch.Tensor:
    """About n images spread over the dataset's users (first photos of each), without decoding all of it."""
    from fl_sim.core.data.base import to_tensor

    users = ds.users()
    per_user = max(1, math.ceil(n / max(1, len(users))))
    out, total = [], 0
    for u in users[:: max(1, len(users) // n)]:
        arr = ds.photos_uint8(u.user)[:per_user]
        out.append(to_tensor(arr, size))
        total += len(arr)
        if total >= n:
            break
    return torch.cat(out)[:n]


def run_audit(mus: Sequence[float], settings: AuditSettings, *, eps_labels: Sequence[float | None] | None = None,
              prior: DiffusionPrior | None = None,
              progress: Callable[[str], None] | None = None) -> AuditResult:
    """The audit at each μ: observe, reconstruct (raw | classical | diffusion), score, bound.

    ``eps_labels`` overrides the ε computed from ``settings`` (a run-based audit knows its own ε).
    """
    from attacks.priors import PriorError
    from fl_sim.core.data import open_dataset
    from fl_sim.core.priors import open_prior

    validate(mus, settings.images)
    if eps_labels is not None and len(eps_labels) != len(mus):
        raise FlSimError(f"eps labels: {len(eps_labels)} given for {len(mus)} mu values")
    say = progress or (lambda _m: None)
    ds = open_dataset(settings.data)
    if prior is None:
        try:
            prior = open_prior(settings.prior)
        except PriorError as exc:
            raise FlSimError(str(exc)) from None
    size = prior.size
    faces = bool(getattr(ds, "faces", True))
    x, attrs, who = audit_targets(ds, settings.images, size)
    gen = torch.Generator().manual_seed(settings.seed)

    # Classical filter statistics from the calibration split (never the audited images).
    cal_spec = settings.calibration or calibration_spec(settings.data)
    wiener = WienerFilter.fit(_calibration_images(open_dataset(cal_spec), size))

    meta: dict[str, Any] = {
        "data": settings.data, "prior": settings.prior, "images": settings.images, "size": size, "seed": settings.seed,
        "noise_model": "y = x + N(0, s^2 I), s = ||[x,1]|| / mu (worst case: clipped gradient all in one first-layer row)",
        "privacy": (f"one release of the Gaussian mechanism, exact GDP, delta={settings.delta:g}"
                    if settings.steps == 1 and settings.sample_rate == 1.0 else
                    f"{settings.steps} DP-SGD steps at sample rate {settings.sample_rate:g}, Opacus RDP, delta={settings.delta:g}"),
        "classical": f"Wiener filter (mean image and power spectrum of {wiener.count} {cal_spec} images; gain P/(P+s^2))",
        "diffusion": {"ddim_steps": settings.ddim_steps, "dc": settings.dc, "samples": settings.samples, "eta": settings.eta},
        "mse_scale": "images in [-1, 1], clipped",
    }
    if faces:
        from fl_sim.core.evaluators.face import AGE_BANDS, GENDERS, age_gender, sface

        say("calibrating the identity threshold")
        cal = face_calibration(_calibration_photos(ds, size, settings.images))
        emb_x = sface().embed(x)
        truth_g = [a.get("gender") for a in attrs]
        truth_a = [a.get("age_band") for a in attrs]
        att_x = age_gender().predict(x)
        say(f"sampling {settings.kappa_samples} prior images for kappa")
        samples = prior.sample(settings.kappa_samples, steps=settings.ddim_steps,
                               generator=torch.Generator().manual_seed(settings.seed + 1)).cpu()
        pair_sims = sface().embed(samples) @ emb_x.T
        kappa, kappa_how = baseline_kappa(int((pair_sims >= cal.threshold).sum()), pair_sims.size)
        unrelated = cal.unrelated_similarity
        meta.update({
            "success_criterion": f"SFace similarity to the original >= {cal.threshold:.3f} (same-identity threshold)",
            "threshold": cal.threshold, "threshold_how": cal.how, "same_identity_mean": cal.same_mean,
            "unrelated_how": "mean SFace similarity between photos of different users (calibration photos)",
            "attributes_vs": "the dataset's ground-truth attributes of the original",
            "attribute_accuracy_of_originals": {
                "gender": _acc([GENDERS[int(g)] for g in att_x.gender], truth_g),
                "age_band": _acc([AGE_BANDS[int(b)][0] for b in att_x.age_band], truth_a)},
        })
    else:
        kappa, kappa_how = 1.0 / len(x), f"chance of naming the target among {len(x)} audited images without the observation"
        unrelated = unrelated_ssim(x)
        meta.update({"success_criterion": "nearest-neighbour identification: the reconstruction is closer (L2) to its own "
                                          "original than to any other audited image",
                     "unrelated_how": "mean SSIM between different audited images"})
    meta.update({"kappa": kappa, "kappa_how": kappa_how})

    rows: list[dict[str, Any]] = []
    bounds: list[dict[str, Any]] = []
    result = AuditResult(rows=rows, rero_bound=bounds, unrelated_similarity=unrelated, meta=meta, originals=x)
    for j, mu in enumerate(mus):
        eps = eps_labels[j] if eps_labels is not None else eps_for_mu(mu, settings.delta, steps=settings.steps,
                                                                        sample_rate=settings.sample_rate)
        y = observe(x, mu, gen)
        s_hat = estimate_noise_std(y, mu)
        result.observations[mu] = y.clamp(-1, 1)
        bounds.append({"mu": mu, "bound": rero_bound(mu, kappa)})
        say(f"mu={mu:g}: reconstructing {len(x)} images")
        recon = diffusion_reconstruct(prior, y, s_hat, steps=settings.ddim_steps, dc=settings.dc,
                                      samples=settings.samples, eta=settings.eta, generator=gen)
        result.reconstructions[mu] = recon
        outs: dict[str, torch.Tensor | None] = {"raw": y.clamp(-1, 1), "classical": wiener(y, s_hat), "diffusion": recon}
        for method, img in outs.items():
            row: dict[str, Any] = {"mu": mu, "method": method, "eps": eps, "delta": settings.delta,
                                   "noise_std": float(noise_std(x, mu).mean())}
            if img is None:
                row.update({"beyond_range": True, "note": "beyond the prior's range", "mse": None, "ssim": None,
                            "face_similarity": None, "success_rate": None})
                rows.append(row)
                continue
            ss = _per_image_ssim(img, x)
            row.update({"beyond_range": False, "mse": float(((img - x) ** 2).mean()), "psnr": psnr(img, x),
                        "ssim": float(ss.mean())})
            if faces:
                sims = (sface().embed(img) * emb_x).sum(1)
                att = age_gender().predict(img)
                row.update({"face_similarity": float(sims.mean()), "success_rate": float((sims >= cal.threshold).mean()),
                            "gender_accuracy": _acc([GENDERS[int(g)] for g in att.gender], truth_g),
                            "age_band_accuracy": _acc([AGE_BANDS[int(b)][0] for b in att.age_band], truth_a)})
            else:
                row.update({"face_similarity": None, "success_rate": float(_nn_identified(img, x).mean())})
            rows.append(row)
    return result


def _acc(pred: list[str], truth: list[str | None]) -> float | None:
    pairs = [(p, t) for p, t in zip(pred, truth) if t is not None]
    return float(np.mean([p == t for p, t in pairs])) if pairs else None


# -- figures ----------------------------------------------------------------------------------
def _eps_text(eps: float | None) -> str:
    if eps is None:
        return "ε ?"
    return f"ε={eps:.0f}" if eps >= 10 else f"ε={eps:.1f}"


def plot_metrics(result: AuditResult, path: Path) -> Path:
    """Metric vs μ: raw | classical | diffusion, the dashed unrelated line, the ReRo bound on success."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faces = result.meta.get("threshold") is not None
    panels = [("mse", "MSE (lower is better)"), ("ssim", "SSIM"),
              ("face_similarity" if faces else None, "face similarity (SFace cosine)"), ("success_rate", "success rate")]
    panels = [p for p in panels if p[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    colors = {"raw": "#999999", "classical": "#1f77b4", "diffusion": "#d62728"}
    labels = {"raw": "raw observation", "classical": "classical (Wiener)", "diffusion": "diffusion prior"}
    for ax, (key, title) in zip(axes, panels):
        for m in METHODS:
            pts = [(r["mu"], r[key]) for r in result.rows if r["method"] == m and r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colors[m], label=labels[m])
        if (key == "face_similarity") or (key == "ssim" and not faces):
            ax.axhline(result.unrelated_similarity, ls="--", color="k", lw=1, label="unrelated images (tells nothing)")
        if key == "face_similarity":
            ax.axhline(result.meta["threshold"], ls="-.", color="#2ca02c", lw=1, label="same-person threshold")
        if key == "success_rate":
            ax.plot([b["mu"] for b in result.rero_bound], [b["bound"] for b in result.rero_bound], ls=":", color="k",
                    marker="^", label="ReRo bound")
            ax.set_ylim(-0.03, 1.03)
        if key == "mse":
            ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        mus = sorted({r["mu"] for r in result.rows})
        ax.set_xticks(mus, [f"{m:g}" for m in mus])
        ax.minorticks_off()
        ax.set_xlabel("μ (= 1/noise multiplier; larger = less private)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"Visual audit of DP-SGD: {result.meta['data']} with prior {result.meta['prior']}, "
                 f"{result.meta['images']} images; success = {result.meta['success_criterion']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_panel(result: AuditResult, path: Path, n_rows: int = 6) -> Path:
    """Original | diffusion reconstruction at each μ, columns labelled with μ and ε at δ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mus = list(result.reconstructions)
    eps = {r["mu"]: r.get("eps") for r in result.rows}
    n = min(n_rows, len(result.originals))
    fig, axes = plt.subplots(n, len(mus) + 1, figsize=(1.25 * (len(mus) + 1), 1.3 * n + 0.5), squeeze=False)
    delta = result.meta.get("privacy", "")

    def show(ax: Any, img: torch.Tensor | None) -> None:
        ax.set_xticks([])
        ax.set_yticks([])
        if img is None:
            ax.text(0.5, 0.5, "beyond\nprior's\nrange", ha="center", va="center", fontsize=7)
            return
        ax.imshow(((img.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1), interpolation="bicubic")

    for i in range(n):
        show(axes[i][0], result.originals[i])
        for j, mu in enumerate(mus):
            rec = result.reconstructions[mu]
            show(axes[i][j + 1], None if rec is None else rec[i])
    axes[0][0].set_title("original", fontsize=8)
    for j, mu in enumerate(mus):
        axes[0][j + 1].set_title(f"μ={mu:g}\n{_eps_text(eps.get(mu))}", fontsize=8)
    import textwrap

    width = max(30, int(14 * (len(mus) + 1)))
    fig.suptitle(textwrap.fill(f"What an adversary with a diffusion prior ({result.meta['prior']}) recovers from one "
                               f"DP-SGD gradient; more privacy (smaller μ, ε) to the left. ε: {delta}", width),
                 fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
