"""Label and attribute inference from the last layer's bias gradient (softmax cross-entropy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from attacks.observation import Observation


@dataclass(frozen=True)
class InferredLabels:
    """Per head: the inferred majority class and the estimated count of each class."""

    labels: dict[str, int]
    counts: dict[str, list[float]]

    def as_tensor(self, heads: tuple[tuple[str, int], ...]) -> torch.Tensor:
        return torch.tensor([self.labels[name] for name, _ in heads], dtype=torch.long)


@torch.no_grad()
def infer_labels(obs: Observation) -> InferredLabels:
    """Counts from ∂ℓ/∂b_c = mean_i (p_ic − y_ic): n_c ≈ n·(p̄_c − ∂ℓ/∂b_c).

    p̄ (the batch's mean softmax) is unknown to the server; it is estimated by the model's
    softmax on a neutral (all-zero) image — exact when the model's output does not depend on
    its input, a fair guess early in training. For FedAvg the pseudo-gradient makes the counts
    an approximation; the majority class is robust either way.
    """
    g = obs.gradient()[obs.classifier_bias()].flatten().float()
    params = {k: v for k, v in obs.global_params.items()}
    logits = functional_call(obs.model, params, (torch.zeros(1, *obs.image_shape),))[0].float()
    labels, counts, start = {}, {}, 0
    n = obs.num_examples * obs.aggregate_size
    for name, classes in obs.heads:
        gb = g[start:start + classes]
        p = torch.softmax(logits[start:start + classes], 0)
        start += classes
        est = (n * (p - gb)).clamp_min(0)
        counts[name] = [float(c) for c in est]
        labels[name] = int(torch.argmin(gb))  # the most negative entry: the class most present
    return InferredLabels(labels, counts)
