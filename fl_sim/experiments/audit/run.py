"""The audit at each μ: observe, reconstruct (raw | classical | diffusion), score, bound; and a run's own settings."""

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
from fl_sim.core.metrics import psnr
from fl_sim.experiments.audit.bounds import DELTA, baseline_kappa, eps_for_mu, rero_bound
from fl_sim.experiments.audit.evaluation import (attribute_accuracy, calibration_images, calibration_photos,
                                                 face_calibration, nn_identified, per_image_ssim, unrelated_ssim)
from fl_sim.experiments.audit.reconstruct import WienerFilter, diffusion_reconstruct
from fl_sim.experiments.audit.threat import estimate_noise_std, noise_std, observe

METHODS = ("raw", "classical", "diffusion")


@dataclass
class AuditSettings:
    """Everything an audit needs besides the μ list; defaults are the measured ones (docs/AUDIT.md)."""

    data: str = "synthfaces:users"
    prior: str = "auto"             # the embedded prior at ``size`` (faces32 | faces64)
    size: int | None = None         # image side; default: the prior's (32 with ``auto``)
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
    """n audited photos: user i mod U, counting back from the last of the first EVAL_PHOTOS, so photos 0..7
    stay for calibration."""
    from fl_sim.core.data.base import EVAL_PHOTOS, to_tensor

    users = ds.users()
    if not users:
        raise FlSimError(f"dataset {ds.spec} has no users")
    per_user: dict[str, np.ndarray] = {}
    imgs, attrs, who = [], [], []
    for i in range(n):
        rec = users[i % len(users)]
        if rec.user not in per_user:
            per_user[rec.user] = ds.photos_uint8(rec.user)[:EVAL_PHOTOS]
        k = i // len(users)
        if k >= len(per_user[rec.user]):
            raise FlSimError(f"--images {n}: dataset {ds.spec} has too few photos per user for that many")
        imgs.append(per_user[rec.user][-1 - k])
        attrs.append(dict(rec.attributes))
        who.append(rec.user)
    return to_tensor(np.stack(imgs), size), attrs, who


def run_audit(mus: Sequence[float], settings: AuditSettings, *, eps_labels: Sequence[float | None] | None = None,
              prior: DiffusionPrior | None = None,
              progress: Callable[[str], None] | None = None,
              step: Callable[[int, int], None] | None = None) -> AuditResult:
    """The audit at each μ: observe, reconstruct (raw | classical | diffusion), score, bound.

    ``step(done, total)``: stages done so far (calibration and kappa for faces, then each μ).

    ``eps_labels`` overrides the ε computed from ``settings`` (a run-based audit knows its own ε).
    """
    from attacks.priors import PriorError
    from fl_sim.core.data import open_dataset
    from fl_sim.core.priors import open_prior, resolve_prior

    validate(mus, settings.images)
    if eps_labels is not None and len(eps_labels) != len(mus):
        raise FlSimError(f"eps labels: {len(eps_labels)} given for {len(mus)} mu values")
    say = progress or (lambda _m: None)
    ds = open_dataset(settings.data)
    if prior is None:
        try:
            prior = open_prior(resolve_prior(settings.prior, settings.size or 32))
        except PriorError as exc:
            raise FlSimError(str(exc)) from None
    size = prior.size
    if settings.size is not None and settings.size != size:
        raise FlSimError(f"--size {settings.size}: prior {settings.prior!r} is {size}x{size}, and the audit runs at its "
                         "prior's size (use --prior auto, or a prior of that size)")
    faces = bool(getattr(ds, "faces", True))
    x, attrs, who = audit_targets(ds, settings.images, size)
    gen = torch.Generator().manual_seed(settings.seed)

    # Classical filter statistics from the calibration split (never the audited images).
    cal_spec = settings.calibration or calibration_spec(settings.data)
    wiener = WienerFilter.fit(calibration_images(open_dataset(cal_spec), size))

    meta: dict[str, Any] = {
        "data": settings.data, "prior": resolve_prior(settings.prior, size), "images": settings.images, "size": size, "seed": settings.seed,
        "noise_model": "y = x + N(0, s^2 I), s = ||[x,1]|| / mu (worst case: clipped gradient all in one first-layer row)",
        "privacy": (f"one release of the Gaussian mechanism, exact GDP, delta={settings.delta:g}"
                    if settings.steps == 1 and settings.sample_rate == 1.0 else
                    f"{settings.steps} DP-SGD steps at sample rate {settings.sample_rate:g}, Opacus RDP, delta={settings.delta:g}"),
        "classical": f"Wiener filter (mean image and power spectrum of {wiener.count} {cal_spec} images; gain P/(P+s^2))",
        "diffusion": {"ddim_steps": settings.ddim_steps, "dc": settings.dc, "samples": settings.samples, "eta": settings.eta},
        "mse_scale": "images in [-1, 1], clipped",
    }
    n_stages = len(mus) + (2 if faces else 0)
    tick = step or (lambda _d, _t: None)
    tick(0, n_stages)
    if faces:
        from fl_sim.core.evaluators.face import AGE_BANDS, GENDERS, age_gender, sface

        say("calibrating the identity threshold")
        cal = face_calibration(calibration_photos(ds, size, settings.images))
        emb_x = sface().embed(x)
        truth_g = [a.get("gender") for a in attrs]
        truth_a = [a.get("age_band") for a in attrs]
        att_x = age_gender().predict(x)
        tick(1, n_stages)
        say(f"sampling {settings.kappa_samples} prior images for kappa")
        samples = prior.sample(settings.kappa_samples, steps=settings.ddim_steps,
                               generator=torch.Generator().manual_seed(settings.seed + 1)).cpu()
        pair_sims = sface().embed(samples) @ emb_x.T
        kappa, kappa_how = baseline_kappa(int((pair_sims >= cal.threshold).sum()), pair_sims.size)
        tick(2, n_stages)
        unrelated = cal.unrelated_similarity
        meta.update({
            "success_criterion": f"SFace similarity to the original >= {cal.threshold:.3f} (same-identity threshold)",
            "threshold": cal.threshold, "threshold_how": cal.how, "same_identity_mean": cal.same_mean,
            "unrelated_how": "mean SFace similarity between photos of different users (calibration photos)",
            "attributes_vs": "the dataset's ground-truth attributes of the original",
            "attribute_accuracy_of_originals": {
                "gender": attribute_accuracy([GENDERS[int(g)] for g in att_x.gender], truth_g),
                "age_band": attribute_accuracy([AGE_BANDS[int(b)][0] for b in att_x.age_band], truth_a)},
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
            ss = per_image_ssim(img, x)
            row.update({"beyond_range": False, "mse": float(((img - x) ** 2).mean()), "psnr": psnr(img, x),
                        "ssim": float(ss.mean())})
            if faces:
                sims = (sface().embed(img) * emb_x).sum(1)
                att = age_gender().predict(img)
                row.update({"face_similarity": float(sims.mean()), "success_rate": float((sims >= cal.threshold).mean()),
                            "gender_accuracy": attribute_accuracy([GENDERS[int(g)] for g in att.gender], truth_g),
                            "age_band_accuracy": attribute_accuracy([AGE_BANDS[int(b)][0] for b in att.age_band], truth_a)})
            else:
                row.update({"face_similarity": None, "success_rate": float(nn_identified(img, x).mean())})
            rows.append(row)
        tick(n_stages - len(mus) + j + 1, n_stages)
    return result


def run_settings(run_dir: Path) -> tuple[list[float], list[float | None], str, list[str]]:
    """The DP-SGD settings a run's users actually had: (mus, eps labels, the run's dataset, notes).

    One μ = 1/z per distinct noise multiplier; its ε label is the largest ε the run's store recorded for
    users with that z (their accountant after their last round), so the panel reads in the run's own terms.
    """
    from fl_sim.core.store import RunStore

    st = RunStore(run_dir / "store.sqlite", readonly=True)
    try:
        users, updates, cfg = st.users(), st.updates(), st.run()["config"]
    finally:
        st.close()
    zs: dict[float, list[str]] = {}
    for u in users:
        dp = (u.get("defenses") or {}).get("dp_sgd")
        if dp:
            zs.setdefault(float(dp["noise_multiplier"]), []).append(u["user"])
    if not zs:
        raise FlSimError(f"--run {run_dir.name}: no user trained under DP-SGD, so there is no DP-SGD setting to audit")
    notes, mus, eps = [], [], []
    for z, who in sorted(zs.items()):
        if z <= 0:
            notes.append(f"{len(who)} user(s) had z=0 (clipping only): no noise, the first-layer extraction is exact")
            continue
        recorded = [float(up["metrics"]["dp-epsilon"]) for up in updates
                    if up["user"] in who and "dp-epsilon" in up["metrics"]]
        mus.append(1.0 / z)
        eps.append(max(recorded) if recorded else None)
        notes.append(f"{len(who)} user(s) at z={z:g} (mu={1 / z:.3g}), epsilon {max(recorded):.3g} after the run"
                     if recorded else f"{len(who)} user(s) at z={z:g}")
    if not mus:
        raise FlSimError(f"--run {run_dir.name}: every DP-SGD user had z=0; " + notes[0])
    return mus, eps, str(cfg["data"]["dataset"]), notes
