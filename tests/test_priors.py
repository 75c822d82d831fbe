"""Diffusion priors: loading, the schedule maths, DDIM on a known case, training and resuming."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from attacks.priors import DiffusionPrior, PriorError
from fl_sim.core.errors import FlSimError
from fl_sim.experiments.prior_train import PriorTrainSpec, build_unet, train_prior
from tests.conftest import FL_SIM


class OracleUNet(torch.nn.Module):
    """The exact noise predictor for a data distribution that is a single image c."""

    def __init__(self, c: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(c, requires_grad=False)
        self.ab = alphas_cumprod.float()
        self.config = SimpleNamespace(sample_size=c.shape[-1])

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        ab = self.ab[t].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x_t - ab.sqrt() * self.c) / (1 - ab).sqrt())


def _sched() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def test_ddim_from_any_t_recovers_the_single_point_distribution() -> None:
    # Prepare
    sched = _sched()
    c = torch.rand(1, 3, 8, 8) * 1.6 - 0.8
    prior = DiffusionPrior(OracleUNet(c, sched.alphas_cumprod), sched.alphas_cumprod, "epsilon")
    for t in (0, 137, 500, 999):
        x_t = prior.add_noise(c.expand(2, -1, -1, -1), t)
        # Execute
        x0 = prior.ddim(x_t, t, steps=10)
        # Assert
        torch.testing.assert_close(x0, c.expand(2, -1, -1, -1), atol=1e-4, rtol=0)


def test_noise_level_mapping_round_trips() -> None:
    sched = _sched()
    prior = DiffusionPrior(OracleUNet(torch.zeros(1, 3, 8, 8), sched.alphas_cumprod), sched.alphas_cumprod)
    x = torch.rand(4000, 3, 8, 8) * 2 - 1
    for s in (0.2, 0.5, 1.0, 3.0):
        t = prior.t_for_noise_std(s)
        ab = float(prior.alpha_bar(t))
        # the scaled observation √ᾱ·(x + s·n) has the forward marginal's noise variance 1 − ᾱ
        y = x + s * torch.randn_like(x)
        resid = (ab ** 0.5) * y - (ab ** 0.5) * x
        assert abs(float(resid.var()) - (1 - ab)) < 0.03 * (1 - ab) + 2e-3
        assert abs(ab - 1 / (1 + s * s)) < 0.01
    assert prior.t_for_noise_std(1e6) is None  # beyond the schedule's last step


def test_prediction_types_agree_on_eps_and_x0() -> None:
    sched = _sched()
    c = torch.rand(1, 3, 8, 8) - 0.5
    oracle = OracleUNet(c, sched.alphas_cumprod)
    x_t = torch.randn(3, 3, 8, 8)
    t = torch.tensor([10, 400, 900])
    eps_ref, x0_ref = DiffusionPrior(oracle, sched.alphas_cumprod, "epsilon").predict(x_t, t)

    class AsV(torch.nn.Module):
        config = oracle.config

        def forward(self, x: torch.Tensor, tt: torch.Tensor) -> SimpleNamespace:
            ab = sched.alphas_cumprod[tt].float().view(-1, 1, 1, 1)
            return SimpleNamespace(sample=ab.sqrt() * oracle(x, tt).sample - (1 - ab).sqrt() * c)

    eps_v, x0_v = DiffusionPrior(AsV(), sched.alphas_cumprod, "v_prediction").predict(x_t, t)
    torch.testing.assert_close(eps_v, eps_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x0_v, x0_ref, atol=1e-4, rtol=1e-4)


def _tiny_spec(**kw: object) -> PriorTrainSpec:
    return PriorTrainSpec(data="folder:unused", size=8, steps=2, batch_size=4, channels=(8, 16), attention=False,
                          checkpoint_every=1, **kw)  # type: ignore[arg-type]


def test_train_two_steps_export_load_and_resume(tmp_path: Path) -> None:
    images = torch.rand(16, 3, 8, 8) * 2 - 1
    out = tmp_path / "prior"
    info = train_prior(_tiny_spec(), out, images=images)
    assert info["steps"] == 2 and (out / "unet" / "config.json").exists() and (out / "samples.png").exists()
    card = (out / "README.md").read_text()
    assert "2 steps" in card and "folder:unused" in card
    # resume to 4 steps continues from the checkpoint
    info2 = train_prior(_tiny_spec().__class__(**{**_tiny_spec().__dict__, "steps": 4}), out, resume=True, images=images)
    assert info2["steps"] == 4 and len(json.loads((out / "training.json").read_text())["spec"]["channels"]) == 2
    # the exported folder loads as a prior and produces images of its size
    prior = DiffusionPrior.load(out, device="cpu")
    assert prior.size == 8 and prior.prediction_type == "v_prediction"
    assert prior.sample(2, steps=3).shape == (2, 3, 8, 8)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FlSimError, match="no checkpoint"):
        train_prior(_tiny_spec(), tmp_path / "none", resume=True, images=torch.zeros(4, 3, 8, 8))


def test_users_split_is_refused_for_prior_training() -> None:
    from fl_sim.experiments.prior_train import load_training_images

    with pytest.raises(FlSimError, match="users split"):
        load_training_images("synthfaces", 32)


def test_bad_prior_sources_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(PriorError, match="not found"):
        DiffusionPrior.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PriorError, match="no diffusers UNet"):
        DiffusionPrior.load(tmp_path / "empty")
    res = subprocess.run([str(FL_SIM), "prior", "sample", "--prior", "nobody/no-such-model", "--n", "1"],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "nobody/no-such-model" in res.stderr


def test_build_unet_matches_spec() -> None:
    unet = build_unet(_tiny_spec())
    assert unet.config.sample_size == 8 and tuple(unet.config.block_out_channels) == (8, 16)


@pytest.mark.parametrize("name,size", [("faces32", 32), ("faces64", 64)])
def test_embedded_prior_matches_its_manifest_and_denoises(name: str, size: int) -> None:
    import hashlib

    from fl_sim.core.priors import PRIORS, open_prior as load_prior

    root = PRIORS[name]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["prior"] == name and "unet/diffusion_pytorch_model.safetensors" in manifest["files"]
    for file, meta in manifest["files"].items():
        assert hashlib.sha256((root / file).read_bytes()).hexdigest() == meta["sha256"], file
    assert sum(meta["bytes"] for meta in manifest["files"].values()) <= 40 * 1024 * 1024
    prior = load_prior(name, device="cpu")
    assert prior.size == size
    # a known-answer sanity check: the one-step estimate from a noised smooth image is closer
    # to it than the noisy input is
    x = torch.zeros(4, 3, size, size)
    x[:, 0] = 0.5
    t = prior.t_for_noise_std(0.5)
    y = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        est = prior.x0(prior.alpha_bar(t).sqrt() * y, t)
    assert float(((est - x) ** 2).mean()) < float(((y - x) ** 2).mean())


def test_auto_prior_follows_the_image_size() -> None:
    from fl_sim.core.config import load_config
    from fl_sim.core.priors import prior_for_size, resolve_prior

    assert [prior_for_size(s) for s in (16, 32, 48, 64, 128)] == ["faces32", "faces32", "faces32", "faces64", "faces64"]
    assert resolve_prior("auto", 64) == "faces64" and resolve_prior("faces32", 64) == "faces32"
    assert load_config(None, []).attack.prior == "faces32"
    assert load_config(None, ["data.image_size=64"]).attack.prior == "faces64"  # the run records the resolved prior
    assert load_config(None, ["data.image_size=64", "attack.prior=faces32"]).attack.prior == "faces32"
