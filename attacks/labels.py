"""Label and attribute inference from the last layer's gradient (softmax cross-entropy): its bias, or — where the
bias is not the user's alone — its weight rows."""

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

    Where the bias is ``unknown`` (other users' updates mixed in), the weight rows stand in: ∂ℓ/∂W_c =
    mean_i (p_ic − y_ic) h_i with h_i ≥ 0 (the features after the last ReLU), so a row's sum is
    mean_i (p_ic − y_ic)·|h_i|₁ — the bias gradient weighted by each photo's feature mass, most negative for the
    class most present. Counts then divide by the neutral image's |h|₁, a rough scale.
    """
    params = {k: v for k, v in obs.global_params.items()}
    logits = functional_call(obs.model, params, (torch.zeros(1, *obs.image_shape),))[0].float()
    bias = obs.classifier_bias()
    if bias in obs.unknown:
        weight = obs.classifier_weight()
        scale = 1.0 / (obs.lr * max(obs.local_steps, 1))
        rows = (obs.update[weight].float() * scale).sum(1)
        mass = _feature_mass(obs, params, weight)
        g = rows / mass if mass > 0 else rows
    else:
        g = obs.gradient()[bias].flatten().float()
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


def _feature_mass(obs: Observation, params: dict[str, torch.Tensor], weight: str) -> float:
    """|h|₁ of the classifier's input on the neutral (all-zero) image: the scale that turns weight-row sums into
    bias-gradient units (0 when the features are dead there)."""
    seen: list[torch.Tensor] = []
    layer = dict(obs.model.named_modules()).get(weight.rsplit(".", 1)[0])
    if layer is None:
        return 0.0
    handle = layer.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach()))
    try:
        functional_call(obs.model, params, (torch.zeros(1, *obs.image_shape),))
    finally:
        handle.remove()
    return float(seen[0].abs().sum()) if seen else 0.0
