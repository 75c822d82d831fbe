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
from fl_sim.core.models import build_model, task_heads, task_loss


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
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
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


def test_where_the_bias_is_not_the_users_labels_come_from_the_weight_rows() -> None:
    # Model inconsistency leaves the classifier's bias mixed with other users': the attack must not read it. With one
    # label per head in the batch, the weight rows give it exactly: row c sums mean_i (p_ic - y_ic)|h_i|, negative
    # only for the class present (the features h are post-ReLU, >= 0).
    from dataclasses import replace

    heads = task_heads("attributes", [])
    model = build_model("convnet", heads, 16, 4, seed=0)
    bias = "classifier.bias"
    for y0 in ([1, 0], [0, 2], [1, 1]):
        y = torch.tensor([y0] * 6)
        obs = _observe(model, torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1, y, heads)
        mixed = replace(obs, update={**obs.update, bias: obs.update[bias] + 5.0 * torch.randn(obs.update[bias].shape)},
                        unknown=(bias,))
        assert infer_labels(mixed).labels == {"gender": y0[0], "age_band": y0[1]}
        assert bias not in mixed.gradient() and set(mixed.gradient()) == set(obs.gradient()) - {bias}
    # The corrupted bias alone would have misled the bias read-out (the check above is not vacuous).
    wrong = replace(obs, update={**obs.update, bias: torch.tensor([-1.0, 1.0, 1.0, 1.0, -1.0])})
    assert infer_labels(wrong).labels != {"gender": 1, "age_band": 1}


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


def test_simulated_fedavg_matches_exactly_at_the_truth_and_the_pseudo_gradient_does_not() -> None:
    # A client that took K full-batch SGD steps on one image: simulating those K steps at the true
    # image reproduces its pseudo-gradient exactly; reading Δ/(ηK) as one gradient does not.
    heads = task_heads("attributes", [])
    model = build_model("convnet", heads, 8, 4, seed=0)
    # Seeded input, small lr: the loss must not collapse in the first step (then every step's
    # gradient would be ~0 and both readings would agree).
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y, lr, k = torch.tensor([[1, 0]]), 0.05, 3
    params = {n: v.detach().clone() for n, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(k):
        opt.zero_grad()
        task_loss(model(x), y, heads).backward()
        opt.step()
    update = {n: params[n] - v.detach() for n, v in model.named_parameters()}
    model.load_state_dict(params, strict=False)
    obs = Observation(model=model, global_params=params, update=update, protocol="fedavg", num_examples=1, lr=lr,
                      loss_fn=partial(task_loss, heads=heads), heads=tuple((h.name, len(h.classes)) for h in heads),
                      image_shape=(3, 8, 8), local_steps=k)
    sim = candidate_gradients(obs, params, x, y, steps=k)
    assert float(cosine_distance(sim, [obs.gradient()])) == pytest.approx(0.0, abs=1e-5)
    one = candidate_gradients(obs, params, x, y)
    assert float(cosine_distance(one, [obs.gradient()])) > 1e-4


def test_diffusion_queries_the_prior_every_kth_iteration_and_repeats_with_its_seed() -> None:
    from fl_sim.core.priors import open_prior as load_prior

    heads = task_heads("attributes", [])
    model = build_model("convnet", heads, 16, 4, seed=0)
    gen = torch.Generator().manual_seed(1)
    obs = [_observe(model, torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1, torch.tensor([[k, 1]] * 4), heads)
           for k in range(2)]
    prior = load_prior("faces32")
    calls = []
    real = prior.eps
    prior.eps = lambda x_t, t: calls.append(len(x_t)) or real(x_t, t)  # count the real network's calls
    cfg = AttackConfig(iterations=12, prior_every=4, lr=0.1)
    a = run_attack("diffusion", obs, prior, cfg)
    assert calls == [2, 2, 2]  # iterations 0, 4, 8; both users in one batch
    b = run_attack("diffusion", obs, prior, cfg)
    assert all(torch.equal(r.image, s.image) for r, s in zip(a, b))
    c = run_attack("diffusion", obs, prior, AttackConfig(iterations=12, prior_every=4, lr=0.1, seed=1))
    assert not torch.equal(a[0].image, c[0].image)


def test_method_defaults_follow_the_image_size() -> None:
    from attacks.methods import method_config

    assert method_config("diffusion", 32) == method_config("diffusion") and method_config("diffusion").iterations == 400
    big = method_config("diffusion", 64)
    assert (big.iterations, big.prior_every) == (800, 8)
    assert method_config("ig", 64).iterations == big.iterations  # equal budgets: the cost ratio compares like with like
    assert method_config("diffusion", 64, iterations=5).iterations == 5  # an explicit value wins
    assert method_config("diffusion", 48) == method_config("diffusion")  # no measured defaults there: the method's own
