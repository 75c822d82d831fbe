"""Attacks on known cases: exact recoveries, zero loss at the truth, label counts, the schedule."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from attacks.analytic import invert_first_linear
from attacks.labels import infer_labels
from attacks.matching import candidate_gradients, cosine_distance, l2_distance
from attacks.methods import AttackConfig, run_attack, sliding_window
from attacks.observation import Observation
from fl_sim.models import build_model, task_heads, task_loss


def _observe(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, heads: list, lr: float = 0.1) -> Observation:
    """A FedSGD observation of one client's full-batch step, made the way the client makes it."""
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    model.zero_grad()
    task_loss(model(x), y, heads).backward()
    update = {k: lr * p.grad.detach().clone() for k, p in model.named_parameters()}
    return Observation(model=model, global_params=params, update=update, protocol="fedsgd", num_examples=len(x),
                       lr=lr, loss_fn=partial(task_loss, heads=heads),
                       heads=tuple((h.name, len(h.classes)) for h in heads), image_shape=tuple(x.shape[1:]))


def test_analytic_first_layer_inversion_is_exact() -> None:
    heads = task_heads("attributes", [])
    model = build_model("mlp", heads, 8, 2, seed=0)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    obs = _observe(model, x, torch.tensor([[1, 0]]), heads)
    g = obs.gradient()
    rec = invert_first_linear(g["fc1.weight"], g["fc1.bias"]).view(1, 3, 8, 8)
    torch.testing.assert_close(rec, x, atol=1e-4, rtol=1e-4)


def test_matching_loss_is_zero_at_the_true_input() -> None:
    heads = task_heads("attributes", [])
    model = build_model("convnet", heads, 8, 4, seed=0)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    y = torch.tensor([[0, 2]])
    obs = _observe(model, x, y, heads)
    cand = candidate_gradients(obs, obs.global_params, x, y)
    assert float(cosine_distance(cand, [obs.gradient()])) == pytest.approx(0.0, abs=1e-5)
    assert float(l2_distance(cand, [obs.gradient()])) == pytest.approx(0.0, abs=1e-8)
    other = candidate_gradients(obs, obs.global_params, torch.zeros_like(x), y)
    assert float(cosine_distance(other, [obs.gradient()])) > 1e-3


def test_label_counts_recovered_from_the_bias_gradient() -> None:
    # A classifier whose output ignores the input (zero weights) makes p̄ known: counts are exact.
    heads = task_heads("attributes", [])
    model = build_model("mlp", heads, 8, 2, seed=0)
    with torch.no_grad():
        model.classifier.weight.zero_()
    y = torch.tensor([[0, 1]] * 5 + [[1, 1]] * 2 + [[1, 2]] * 1)
    obs = _observe(model, torch.randn(8, 3, 8, 8), y, heads)
    inf = infer_labels(obs)
    assert inf.counts["gender"] == pytest.approx([5.0, 3.0], abs=1e-4)
    assert inf.counts["age_band"] == pytest.approx([0.0, 7.0, 1.0], abs=1e-4)
    assert inf.labels == {"gender": 0, "age_band": 1}


def test_ig_recovers_a_single_image_through_a_fully_connected_first_layer() -> None:
    heads = task_heads("attributes", [])
    model = build_model("mlp", heads, 8, 2, seed=0)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 1.6 - 0.8
    obs = _observe(model, x, torch.tensor([[1, 2]]), heads)
    # restarts, as in Inverting Gradients: a single start can stall in a local minimum
    rec = run_attack("ig", [obs], None, AttackConfig(iterations=300, lr=0.02, tv=0.0, restarts=4))[0]
    mse = float(((rec.image - x[0]) ** 2).mean())
    assert 10 * torch.log10(torch.tensor(4.0 / mse)) > 30  # PSNR > 30 dB: almost exact


def test_sliding_window_covers_the_range_in_order() -> None:
    w = sliding_window(400, 600, 50, 100)
    assert w[0] == (500, 600) and w[-1] == (0, 50)
    his = [hi for _, hi in w]
    assert his == sorted(his, reverse=True) and all(hi - lo <= 100 for lo, hi in w)


def test_attacks_are_batched_over_users_and_keep_them_apart() -> None:
    heads = task_heads("attributes", [])
    model = build_model("mlp", heads, 8, 2, seed=0)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(1, 3, 8, 8, generator=gen) * 1.6 - 0.8 for _ in range(3)]
    obs = [_observe(model, x, torch.tensor([[k % 2, k % 3]]), heads) for k, x in enumerate(xs)]
    recs = run_attack("ig", obs, None, AttackConfig(iterations=200, lr=0.02, tv=0.0))
    for k, r in enumerate(recs):
        errs = [float(((r.image - x[0]) ** 2).mean()) for x in xs]
        assert errs.index(min(errs)) == k and r.labels == {"gender": k % 2, "age_band": k % 3}
