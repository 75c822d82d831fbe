"""Scoring reconstructions against users' true photos — the evaluators, never called by an attack.

Every reconstruction is scored by two independent face-identity models (SFace: a MobileFaceNet
trained on CASIA-WebFace via OpenCV's zoo; dlib's ResNet trained on ~3M faces), each reported
under its own prefix (``sface_*``, ``dlib_*``). The unprefixed re-identification figures are the
lower (more conservative) of the two, so a figure that holds only under one evaluator never
becomes the headline.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fl_sim.core.evaluators.face import AGE_BANDS, GENDERS, age_gender, identity_embedder
from fl_sim.core.metrics import psnr, ssim
from fl_sim.core.names import EVALUATORS as EVALUATORS  # the evaluators every attack is scored by



def _embed(evaluator: str, images: torch.Tensor) -> np.ndarray:
    emb: np.ndarray = identity_embedder(evaluator).embed(images)
    return emb


class LazyPhotos(Mapping[str, torch.Tensor]):
    """Users' photos read from their dataset when asked for, the last ``keep`` users' kept: a scorer over 1,000
    users holds a few users' photos, not all of them."""

    def __init__(self, dataset: str, size: int, count: int, users: list[str], keep: int = 16) -> None:
        self.dataset, self.size, self.count, self.users, self.keep = dataset, size, count, list(users), keep
        self._known = set(self.users)
        self._kept: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._ds: Any = None  # opened at the first read, then kept (a folder dataset scans its folder when opened)

    def __getitem__(self, user: str) -> torch.Tensor:
        if user not in self._known:
            raise KeyError(user)
        if user in self._kept:
            self._kept.move_to_end(user)
            return self._kept[user]
        if self._ds is None:
            from fl_sim.core.data import open_dataset

            self._ds = open_dataset(self.dataset)
        photos: torch.Tensor = self._ds.photos(user, self.size)[:self.count]
        self._kept[user] = photos
        if len(self._kept) > self.keep:
            self._kept.popitem(last=False)
        return photos

    def __iter__(self) -> Iterator[str]:
        return iter(self.users)

    def __len__(self) -> int:
        return len(self.users)


def others_averages(means: list[torch.Tensor]) -> torch.Tensor:
    """For each user, the mean of the *other* users' mean photos: (total - own) / (n - 1), summed in float64 so the
    result does not depend on the order of the users, in O(n). One user: their own mean (there are no others)."""
    if len(means) == 1:
        return means[0][None].float()
    total = torch.zeros_like(means[0], dtype=torch.float64)
    for m in means:
        total += m.double()
    return torch.stack([((total - m.double()) / (len(means) - 1)).float() for m in means])


@dataclass
class UserTruth:
    """What the scorer (and only the scorer) knows about each user: their photos and attributes.

    ``embeddings[evaluator][user]`` are the user's photos' embeddings; ``average[evaluator][user]``
    is how similar the *average face of the other users* (the mean of their photos: a face with
    no one's identity) is to the user's photos — the zero of identity gain.

    ``photos`` may be a ``LazyPhotos``: then each user's photos are read once to embed them (through the on-disk
    embedding cache, ``fl_sim.core.evaluators.cache``) and again only for the users a reconstruction claims, so
    what is held grows with the users by their embeddings (~6 KB a user) and nothing else.
    """

    users: list[str]
    photos: Mapping[str, torch.Tensor]  # user -> (N, 3, H, W) in [-1, 1]
    attributes: dict[str, dict[str, str | None]]
    evaluators: tuple[str, ...] = EVALUATORS
    embeddings: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    average: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from fl_sim.core.evaluators.cache import embed

        means = []
        for u in self.users:
            photos = self.photos[u]
            means.append(photos.float().mean(0))
            for ev in self.evaluators:
                emb = self.embeddings.setdefault(ev, {})
                if u not in emb:
                    emb[u] = embed(ev, photos)
        others = others_averages(means)
        del means
        for ev in self.evaluators:
            emb = self.embeddings[ev]
            avg = embed(ev, others)
            self.average[ev] = {u: float((emb[u] @ avg[i]).mean()) if len(self.users) > 1 else float("nan")
                                for i, u in enumerate(self.users)}

    def similarities(self, evaluator: str, emb: np.ndarray) -> dict[str, float]:
        """Mean cosine of one embedding to each user's photos."""
        return {u: float((self.embeddings[evaluator][u] @ emb).mean()) for u in self.users}

    def context(self, evaluator: str | None = None) -> dict[str, float]:
        """The lines printed beside every similarity: within-user range, between-user mean."""
        embs = self.embeddings[evaluator or self.evaluators[0]]
        within_lo, within_hi, within_mean, between = [], [], [], []
        for e in embs.values():
            s = e @ e.T
            off = s[~np.eye(len(e), dtype=bool)]
            if len(off):
                within_lo.append(off.min())
                within_hi.append(off.max())
                within_mean.append(off.mean())
        us = list(embs)
        for i, u in enumerate(us):
            for v in us[i + 1:]:
                between.append(float((embs[u] @ embs[v].T).mean()))
        nan = float("nan")
        return {"within_user_min": float(np.min(within_lo)) if within_lo else nan,
                "within_user_max": float(np.max(within_hi)) if within_hi else nan,
                "within_user_mean": float(np.mean(within_mean)) if within_mean else nan,
                "between_user_mean": float(np.mean(between)) if between else nan}


def _known(truth: dict[str, str | None], key: str) -> str | None:
    v = truth.get(key)
    return v if v else None


def score(images: torch.Tensor, claimed: list[str | None], truth: UserTruth) -> list[dict[str, float | int | str | None]]:
    """Per reconstruction, under each evaluator: facial similarity to its user's photos, identity
    gain over the average face, re-identification rank among all users; then attributes read off
    the reconstruction vs the truth (None where the truth is unknown), PSNR/SSIM vs the user's
    mean photo, PSNR vs the closest of the user's photos and the share of photos it recovers (>= 25 dB: 0 or 1/m).

    ``claimed[i]`` is the user reconstruction i came from (None for an aggregate: then each
    evaluator's best-matching user is reported and no rank).
    """
    attrs = age_gender().predict(images)
    rows: list[dict[str, float | int | str | None]] = [
        {"inferred_gender": GENDERS[int(attrs.gender[i])], "inferred_age_band": AGE_BANDS[int(attrs.age_band[i])][0]}
        for i in range(len(claimed))]
    for ev in truth.evaluators:
        emb = _embed(ev, images)
        for i, user in enumerate(claimed):
            sims = truth.similarities(ev, emb[i])
            order = sorted(sims, key=lambda u: sims[u], reverse=True)
            row = rows[i]
            row[f"{ev}_best_match"] = order[0]
            row[f"{ev}_best_match_similarity"] = sims[order[0]]
            target = user if user is not None else order[0]
            gain = sims[target] - truth.average[ev][target]
            row[f"{ev}_identity_gain"] = gain if np.isfinite(gain) else None
            if user is not None:
                row[f"{ev}_face_similarity"] = sims[user]
                row[f"{ev}_reid_rank"] = order.index(user) + 1
                row[f"{ev}_reid_top1"] = int(order[0] == user)
                row[f"{ev}_reid_top5"] = int(user in order[:5])
    for i, user in enumerate(claimed):
        row = rows[i]
        gains = [row[f"{ev}_identity_gain"] for ev in truth.evaluators if row.get(f"{ev}_identity_gain") is not None]
        row["identity_gain"] = min(gains) if gains else None  # type: ignore[type-var]
        if user is None:
            continue
        # The conservative headline: re-identified only if every evaluator re-identifies.
        row["reid_top1"] = min(int(row[f"{ev}_reid_top1"]) for ev in truth.evaluators)  # type: ignore[arg-type]
        row["reid_rank"] = max(int(row[f"{ev}_reid_rank"]) for ev in truth.evaluators)  # type: ignore[arg-type]
        g, a = _known(truth.attributes[user], "gender"), _known(truth.attributes[user], "age_band")
        row["gender_correct"] = None if g is None else int(row["inferred_gender"] == g)
        row["age_band_correct"] = None if a is None else int(row["inferred_age_band"] == a)
        mean_photo = truth.photos[user].mean(0, keepdim=True)
        row["psnr_mean_photo"] = psnr(images[i:i + 1], mean_photo)
        row["ssim_mean_photo"] = ssim(images[i:i + 1], mean_photo)
        # As a per-photo recovery (the malicious server's measure): one image can stand for at most one photo.
        best = float(pair_psnr(images[i:i + 1].float(), truth.photos[user].float()).max())
        row["psnr_best_photo"] = best
        row["photos_recovered"] = int(best >= RECOVERED_PSNR) / len(truth.photos[user])
    return rows


# -- per-photo recoveries (a malicious server's imprint read-out) ---------------------------------
RECOVERED_PSNR = 25.0  # a photo counts as recovered when its matched candidate is at least this close (dB)


def pair_psnr(cands: torch.Tensor, photos: torch.Tensor) -> np.ndarray:
    """PSNR (dB, as ``fl_sim.core.metrics.psnr``) of every candidate against every photo: (n, m)."""
    mse = ((cands.clamp(-1, 1)[:, None] - photos[None]) ** 2).flatten(2).mean(2).clamp_min(1e-10)
    out: np.ndarray = (10 * torch.log10(4.0 / mse)).double().numpy()
    return out


def best_photo_psnr(cands: torch.Tensor, user: str, truth: UserTruth) -> list[float]:
    """Per candidate: its PSNR (dB) against the closest of the user's photos."""
    if not len(cands):
        return []
    return [float(v) for v in pair_psnr(cands.float(), truth.photos[user].float()).max(1)]


def score_photos(cands: torch.Tensor, user: str, truth: UserTruth,
                 mixed: list[bool] | None = None) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """Each candidate photo matched one-to-one to the user's true photos (Hungarian, on PSNR), then PSNR, SSIM and
    face similarity (per evaluator: cosine of the candidate's embedding to the matched photo's) per match.

    Returns the metrics — ``photos`` (one entry per match), ``photos_recovered`` (share of the user's photos whose
    match is at >= ``RECOVERED_PSNR`` dB), ``psnr_matched_mean`` — and the matches as (candidate, photo) pairs."""
    from scipy.optimize import linear_sum_assignment

    photos = truth.photos[user].float()
    m = len(photos)
    flags = list(mixed) if mixed is not None else [False] * len(cands)
    out: dict[str, Any] = {"photos_total": m, "candidates": len(cands), "candidates_mixed": int(sum(flags)),
                           "recovered_psnr_threshold": RECOVERED_PSNR}
    if not len(cands):
        return {**out, "photos": [], "photos_recovered": 0.0, "psnr_matched_mean": None}, []
    table = pair_psnr(cands.float(), photos)
    rows, cols = linear_sum_assignment(-table)
    pairs = sorted(zip(rows.tolist(), cols.tolist()), key=lambda p: p[1])
    embs = {ev: _embed(ev, torch.stack([cands[i] for i, _ in pairs]).clamp(-1, 1)) for ev in truth.evaluators}
    per: list[dict[str, Any]] = []
    for n, (i, j) in enumerate(pairs):
        entry: dict[str, Any] = {"photo": j, "candidate": i, "psnr": float(table[i, j]),
                                 "ssim": ssim(cands[i:i + 1].float(), photos[j:j + 1]), "mixed": bool(flags[i])}
        sims = {ev: float(embs[ev][n] @ truth.embeddings[ev][user][j]) for ev in truth.evaluators}
        entry.update({f"{ev}_face_similarity": v for ev, v in sims.items()})
        entry["face_similarity"] = min(sims.values())  # the conservative one, as for re-identification
        entry["recovered"] = int(entry["psnr"] >= RECOVERED_PSNR)
        per.append(entry)
    out.update(photos=per, photos_recovered=sum(e["recovered"] for e in per) / m,
               psnr_matched_mean=float(np.mean([e["psnr"] for e in per])),
               ssim_matched_mean=float(np.mean([e["ssim"] for e in per])),
               face_similarity_matched_mean=float(np.mean([e["face_similarity"] for e in per])))
    return out, pairs
