"""`fl-sim data info`: counts plus the face evaluator's sanity figures on a dataset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_sim.core.data import open_dataset
from fl_sim.core.data.base import UserRecord, to_tensor


def identity_separation(emb: np.ndarray, owner: np.ndarray) -> dict[str, float]:
    """Same-identity and different-identity mean cosine, and leave-one-out re-identification.

    ``emb``: unit embeddings (N, D); ``owner``: identity index per row. Exact, via per-identity
    sums, so it costs O(N·U·D) rather than an N x N matrix.
    """
    ids = np.unique(owner)
    k = np.searchsorted(ids, owner)
    sums = np.zeros((len(ids), emb.shape[1]), np.float64)
    np.add.at(sums, k, emb)
    counts = np.bincount(k, minlength=len(ids)).astype(np.float64)
    total = emb.sum(0, dtype=np.float64)
    self_sim = np.einsum("ij,ij->i", emb, emb)
    within = sum(float(sums[u] @ sums[u]) - float(self_sim[k == u].sum()) for u in range(len(ids)))
    n_within = float((counts * (counts - 1)).sum())
    all_pairs = float(total @ total) - float(self_sim.sum())
    n_all = float(len(emb) * (len(emb) - 1))
    # Leave-one-out: photo i's score for identity v is its mean similarity to v's photos, minus itself.
    scores = emb @ sums.T
    scores[np.arange(len(emb)), k] -= self_sim
    denom = np.broadcast_to(counts, scores.shape).copy()
    denom[np.arange(len(emb)), k] -= 1
    scores = scores / np.maximum(denom, 1)
    return {"same_identity_mean": within / max(n_within, 1),
            "different_identity_mean": (all_pairs - within) / max(n_all - n_within, 1),
            "loo_reid": float(np.mean(scores.argmax(1) == k))}


def dataset_info(spec: str, size: int) -> dict[str, Any]:
    """The figures `fl-sim data info` prints (see the JSON keys in the README)."""
    from fl_sim.core.evaluators.face import sface

    ds = open_dataset(spec)
    t0 = time.time()
    users = ds.users()
    if hasattr(ds, "all_photos_uint8"):
        photos, owner = ds.all_photos_uint8()
    else:
        chunks = [ds.photos_uint8(u.user) for u in users]
        photos = np.concatenate(chunks)
        owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(chunks)])
    images = to_tensor(photos, size)
    load_s = time.time() - t0
    emb = sface().embed(images)
    info: dict[str, Any] = {
        "dataset": spec, "image_size": size, "users": len(users),
        "images": int(len(images)),
        "min_images_per_user": int(min(u.n_photos for u in users)),
        "max_images_per_user": int(max(u.n_photos for u in users)),
        "attributes": list(ds.attribute_names),
        "attribute_counts": _attribute_counts(users),
        "prior_images": 0, "identities_disjoint": None,
        "evaluator": "sface",
        **identity_separation(emb, owner),
        "mtcnn_detection_rate": _detection_rate(images, owner),
        "load_seconds": round(load_s, 2),
    }
    if spec.split(":")[0] == "synthfaces":
        from fl_sim.core.data.synthfaces import open_synthfaces

        prior = open_synthfaces("prior")
        info["prior_images"] = sum(u.n_photos for u in prior.users())
        info["prior_identities"] = len(prior.users())
        info["identities_disjoint"] = synthfaces_disjoint(open_synthfaces("users").identities(), prior.identities())
    elif spec.split(":")[0] == "synthshift":
        from fl_sim.core.data.synthfaces import open_synthfaces
        from fl_sim.core.data.synthshift import identities

        # Disjoint from every embedded identity, users and prior alike.
        embedded = open_synthfaces("users").identities() + open_synthfaces("prior").identities()
        info["identities_disjoint"] = synthfaces_disjoint(identities(), embedded)
    return info


def synthfaces_disjoint(users: list[dict[str, Any]], prior: list[dict[str, Any]]) -> bool:
    """True when no identity latent of the users split reappears in the prior split.

    Compares the latent vectors themselves (regenerated from each identity's recorded seed),
    not just the names, so a generator bug that reused latents would show here.
    """
    from fl_sim.core.data.synth import identity_latent

    def latents(ids: list[dict[str, Any]]) -> set[bytes]:
        out: set[bytes] = set()
        for i in ids:
            lat = i["latent"]
            split = "users" if lat["split_code"] == 0 else "prior"
            out.add(np.round(identity_latent(lat["seed"], split, lat["index"]), 5).tobytes())
        return out

    a, b = latents(users), latents(prior)
    return len(a) == len(users) and len(b) == len(prior) and not (a & b)


def _attribute_counts(users: list[UserRecord]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for u in users:
        for k, v in u.attributes.items():
            out.setdefault(k, {})
            out[k][str(v)] = out[k].get(str(v), 0) + 1
    return out


def _detection_rate(images: torch.Tensor, owner: np.ndarray, per_user: int = 1) -> float:
    """MTCNN's detection rate on the first ``per_user`` photos of each identity (a sanity figure)."""
    from fl_sim.core.evaluators.face import MtcnnDetector

    first = np.concatenate([np.flatnonzero(owner == u)[:per_user] for u in np.unique(owner)])
    return MtcnnDetector().detection_rate(images[first])


def contact_sheet(spec: str, out: Path, users: int = 10, photos: int = 8, scale: int = 2) -> Path:
    """A PNG grid: one row per user (their first ``photos`` photos), labelled with id and attributes."""
    from PIL import Image, ImageDraw

    ds = open_dataset(spec)
    recs = ds.users()[:users]
    rows = []
    for rec in recs:
        ph = ds.photos_uint8(rec.user)[:photos]
        rows.append((rec, np.concatenate(list(ph), axis=1)))
    tile = rows[0][1].shape[0]
    label_w = 150
    sheet = Image.new("RGB", (label_w + rows[0][1].shape[1] * scale, len(rows) * tile * scale), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (rec, strip) in enumerate(rows):
        img = Image.fromarray(strip).resize((strip.shape[1] * scale, tile * scale), Image.Resampling.NEAREST)
        sheet.paste(img, (label_w, i * tile * scale))
        a = rec.attributes
        draw.text((6, i * tile * scale + 8), f"{rec.user}\n{a.get('gender')}\nage {a.get('age_band')}", fill="black")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
