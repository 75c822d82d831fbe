"""A baseline attack method: a flat gray image for every observation (what guessing scores)."""

from __future__ import annotations

import torch

from attacks.labels import infer_labels
from attacks.methods import AttackConfig, Reconstruction, register_attack
from attacks.observation import Observation
from attacks.priors import DiffusionPrior


@register_attack("gray", help="baseline: a flat gray image per user (example plugin)")
def gray(observations: list[Observation], prior: DiffusionPrior | None, cfg: AttackConfig) -> list[Reconstruction]:
    out = []
    for o in observations:
        inferred = infer_labels(o)
        out.append(Reconstruction(method="gray", image=torch.zeros(o.image_shape), labels=inferred.labels,
                                  label_counts=inferred.counts))
    return out
