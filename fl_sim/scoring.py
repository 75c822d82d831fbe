"""Scoring reconstructions against users' true photos — the evaluator, never called by an attack."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from fl_sim.evaluators.face import AGE_BANDS, GENDERS, age_gender, sface


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
    conv = lambda t: F.conv2d(t, k, groups=a.shape[1])  # noqa: E731
    mu_a, mu_b = conv(a), conv(b)
    var_a, var_b = conv(a * a) - mu_a ** 2, conv(b * b) - mu_b ** 2
    cov = conv(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


@dataclass
class UserTruth:
    """What the scorer (and only the scorer) knows about each user: their photos and attributes."""

    users: list[str]
    photos: dict[str, torch.Tensor]  # user -> (N, 3, H, W) in [-1, 1]
    attributes: dict[str, dict[str, str | None]]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for u in self.users:
            if u not in self.embeddings:
                self.embeddings[u] = sface().embed(self.photos[u])

    def context(self) -> dict[str, float]:
        """The lines printed beside every similarity: within-user range, between-user mean."""
        within_lo, within_hi, within_mean, between = [], [], [], []
        for e in self.embeddings.values():
            s = e @ e.T
            off = s[~np.eye(len(e), dtype=bool)]
            within_lo.append(off.min())
            within_hi.append(off.max())
            within_mean.append(off.mean())
        us = list(self.embeddings)
        for i, u in enumerate(us):
            for v in us[i + 1:]:
                between.append(float((self.embeddings[u] @ self.embeddings[v].T).mean()))
        return {"within_user_min": float(np.min(within_lo)), "within_user_max": float(np.max(within_hi)),
                "within_user_mean": float(np.mean(within_mean)),
                "between_user_mean": float(np.mean(between)) if between else float("nan")}


def score(images: torch.Tensor, claimed: list[str | None], truth: UserTruth) -> list[dict[str, float | int | str | None]]:
    """Per reconstruction: facial similarity to its user's photos, re-identification rank among all
    users, attributes read off the reconstruction vs the truth, PSNR/SSIM vs the user's mean photo.

    ``claimed[i]`` is the user reconstruction i came from (None for an aggregate: then the best
    matching user is reported and no rank).
    """
    emb = sface().embed(images)
    attrs = age_gender().predict(images)
    out = []
    for i, user in enumerate(claimed):
        sims = {u: float((truth.embeddings[u] @ emb[i]).mean()) for u in truth.users}
        order = sorted(sims, key=sims.get, reverse=True)
        row: dict[str, float | int | str | None] = {
            "best_match": order[0], "best_match_similarity": sims[order[0]],
            "inferred_gender": GENDERS[int(attrs.gender[i])], "inferred_age_band": AGE_BANDS[int(attrs.age_band[i])][0],
        }
        if user is not None:
            mean_photo = truth.photos[user].mean(0, keepdim=True)
            row.update({
                "face_similarity": sims[user], "reid_rank": order.index(user) + 1,
                "reid_top1": int(order[0] == user), "reid_top5": int(user in order[:5]),
                "gender_correct": int(row["inferred_gender"] == truth.attributes[user].get("gender")),
                "age_band_correct": int(row["inferred_age_band"] == truth.attributes[user].get("age_band")),
                "psnr_mean_photo": psnr(images[i:i + 1], mean_photo), "ssim_mean_photo": ssim(images[i:i + 1], mean_photo),
            })
        out.append(row)
    return out
