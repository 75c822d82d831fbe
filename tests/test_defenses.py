"""Client defenses: DP-SGD's epsilon against Opacus, per-user defenses, compression, user-level DP, SecAgg+."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_sim.core.config import load_config
from fl_sim.core.defenses import (compress_update, dp_sgd_noise, dp_sgd_schedule, dp_sgd_training, hides_user,
                              user_defenses)
from fl_sim.federation import run_federation
from fl_sim.core.store import RunStore
from tests.conftest import FL_SIM, make_face_folder

TINY = ["data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2", "model.width=4"]


def _export(run_dir: Path) -> dict:
    st = RunStore(run_dir / "store.sqlite", readonly=True)
    try:
        return st.export()
    finally:
        st.close()


def test_dp_sgd_epsilon_in_the_store_equals_opacus_accountant_and_defenses_differ_per_user(tmp_path: Path) -> None:
    from opacus.accountants import RDPAccountant

    # Prepare: 2 users, half of them (one) under DP-SGD; its own lr and 2 Poisson mini-batches of 2 a round
    data = make_face_folder(tmp_path / "faces", users=2, photos=6)
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=2", "rounds=2", "protocol=fedavg",
                             "local_batch_size=2", *TINY, "attack.enabled=false",
                             "defenses.dp_sgd.noise_multiplier=1.3", "defenses.dp_sgd.max_grad_norm=0.5",
                             "defenses.dp_sgd.batch_size=2", "defenses.dp_sgd.epochs=1", "defenses.dp_sgd.lr=0.03",
                             "defenses.dp_sgd.users=half"])
    # Execute
    res = run_federation(cfg, tmp_path / "runs")
    # Verify: the DP user's epsilon after round r is Opacus's for (z, q, 2r steps); the other user has none
    assert res.status == "finished", res.error
    doc = _export(res.run_dir)
    dp_users = [u["user"] for u in doc["users"] if "dp_sgd" in u["defenses"]]
    assert len(dp_users) == 1
    q, steps = dp_sgd_schedule(cfg)
    assert (q, steps) == (0.5, 2)
    for up in doc["updates"]:
        if up["user"] in dp_users:
            acc = RDPAccountant()
            acc.history = [(1.3, q, steps * up["round"])]
            assert up["metrics"]["dp-epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
            assert up["metrics"]["dp-steps"] == steps * up["round"] and "dp_sgd" in up["defenses"]
            assert up["metrics"]["lr"] == 0.03  # DP-SGD's own lr trained it (the attacks read this label)
        else:
            assert "dp-epsilon" not in up["metrics"] and up["defenses"] == {}
            assert up["metrics"]["lr"] == cfg.lr
    eps = [u["metrics"]["dp-epsilon"] for u in doc["updates"] if u["user"] in dp_users]
    assert eps[1] > eps[0]  # cumulative across rounds, not restarted
    assert all(r["accuracy"] is not None for r in doc["rounds"])  # utility recorded beside the privacy cost
    # `fl-sim audit --run` audits exactly these settings: mu = 1/z, labelled with the run's final epsilon
    from fl_sim.experiments.audit import run_settings

    mus, labels, data_spec, _ = run_settings(res.run_dir)
    assert mus == [pytest.approx(1 / 1.3)] and labels == [pytest.approx(eps[1])] and data_spec.startswith("folder:")


def test_target_epsilon_is_reached_after_all_planned_rounds() -> None:
    from opacus.accountants import RDPAccountant

    cfg = load_config(None, ["rounds=5", "defenses.dp_sgd.target_epsilon=4", "defenses.dp_sgd.delta=1e-5"])
    z = dp_sgd_noise(cfg)
    q, steps = dp_sgd_schedule(cfg)
    acc = RDPAccountant()
    acc.history = [(z, q, steps * cfg.rounds)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps = acc.get_epsilon(1e-5)
    assert cfg.defenses.dp_sgd.enabled and 0 < z
    assert 3.9 <= eps <= 4.0


def test_compression_known_answers() -> None:
    before = {"a": torch.zeros(10), "b": torch.zeros(2, 5), "n": torch.tensor(3)}
    after = {"a": torch.arange(10.0), "b": -torch.arange(10.0).view(2, 5) * 0.5, "n": torch.tensor(3)}
    top = compress_update(before, after, {"topk": 0.1}, seed=0)  # 2 of 20 entries: 9 and 8 (|b| <= 4.5)
    assert torch.equal(top["a"], torch.tensor([0.0] * 8 + [8.0, 9.0])) and not top["b"].any()
    assert torch.equal(top["n"], after["n"])  # integer buffers are not an update
    pruned = compress_update(before, after, {"prune": 0.5}, seed=0)  # each layer's 5 smallest magnitudes zeroed
    assert torch.equal(pruned["a"], torch.tensor([0.0] * 5 + [5.0, 6.0, 7.0, 8.0, 9.0]))
    assert (pruned["b"] != 0).sum() == 5
    one_bit = [compress_update(before, after, {"quantize_bits": 1}, seed=s)["a"] for s in range(400)]
    assert all(set(q.tolist()) <= {0.0, 9.0} for q in one_bit)
    assert torch.allclose(torch.stack(one_bit).mean(0), after["a"], atol=0.6)  # stochastic rounding is unbiased


def test_per_user_selection_and_secagg_defaults() -> None:
    cfg = load_config(None, ["users=6", "defenses.dp_sgd.noise_multiplier=1", "defenses.dp_sgd.users=sample:2",
                             "defenses.compression.topk=0.5", "defenses.secagg.enabled=true"])
    users = [f"u{i}" for i in range(6)]
    d = user_defenses(cfg, users)
    assert sum("dp_sgd" in r for r in d.values()) == 2 and all("compression" in r for r in d.values())
    assert all(r["secagg"] == {"num_shares": 6, "reconstruction_threshold": 3} for r in d.values())
    assert d == user_defenses(cfg, list(reversed(users)))  # a function of the seed and names, not order


@pytest.mark.parametrize("bad,where", [
    ("defenses.dp_sgd.noise_multiplier=-1", "defenses.dp_sgd.noise_multiplier"),
    ("defenses.dp_sgd.max_grad_norm=0", "defenses.dp_sgd.max_grad_norm"),
    ("defenses.dp_sgd.target_epsilon=1e-7", "defenses.dp_sgd.target_epsilon"),
    ("defenses.secagg.reconstruction_threshold=5", "defenses.secagg.reconstruction_threshold"),
    ("model.norm=batch", "defenses.dp_sgd"),
])
def test_invalid_defense_parameters_fail_before_training(tmp_path: Path, bad: str, where: str) -> None:
    runs = tmp_path / "runs"
    extra = ["--set", "defenses.dp_sgd.enabled=true"] if bad == "model.norm=batch" else []
    if "secagg" in bad:
        extra = ["--set", "defenses.secagg.enabled=true", "--set", "users=4"]
    res = subprocess.run([str(FL_SIM), "run", "--runs-dir", str(runs), "--set", bad, *extra],
                         capture_output=True, text=True)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and where in lines[0], res.stderr
    assert not runs.exists() or not any(runs.iterdir())


def test_secagg_store_holds_only_aggregates_and_attacks_target_them(tmp_path: Path) -> None:
    data = make_face_folder(tmp_path / "faces", users=3, photos=6)
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=3", "rounds=2", *TINY,
                             "defenses.secagg.enabled=true", "defenses.secagg.reconstruction_threshold=2",
                             "attack.methods=ig", "attack.iterations=3", "attack.every=1"])
    res = run_federation(cfg, tmp_path / "runs")
    assert res.status == "finished", res.error
    doc = _export(res.run_dir)
    assert doc["updates"] and all(u["user"] is None and u["metrics"]["aggregate_size"] == 3 for u in doc["updates"])
    assert len(doc["attacks"]) == 2
    assert all(a["user"] is None and a["aggregate_size"] == 3 and a["status"] == "finished" and "secagg" in a["defenses"]
               for a in doc["attacks"])
    # The recorded aggregate is the FedAvg of what the users trained (SecAgg+ quantises: close, not exact).
    final = torch.load(res.run_dir / "final_model.pt")
    assert all(torch.isfinite(v.float()).all() for v in final.values())
    norms = [u["update_norm"] for u in doc["updates"]]
    assert all(n > 0 for n in norms)


@pytest.mark.parametrize("mode", ["client-fixed", "server-fixed", "server-adaptive", "local"])
def test_user_level_dp_modes_and_what_the_server_sees(tmp_path: Path, mode: str) -> None:
    data = make_face_folder(tmp_path / "faces", users=2, photos=6)
    clip = 1e-3
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=2", "rounds=1", "lr=1.0", *TINY,
                             "attack.enabled=false", f"defenses.user_dp.mode={mode}",
                             f"defenses.user_dp.clipping_norm={clip}", "defenses.user_dp.local_epsilon=1"])
    res = run_federation(cfg, tmp_path / "runs")
    assert res.status == "finished", res.error
    norms = np.array([u["update_norm"] for u in _export(res.run_dir)["updates"]])
    if mode != "local":
        assert (norms <= clip * 1.0001).all()  # clipped, and no noise: the server sees the user's update
    else:
        assert (norms > 10 * clip).all()  # local DP's noise is in what the server receives


def test_inspect_says_which_defenses_hide_a_single_update() -> None:
    seen = {}
    for mode in ("off", "client-fixed", "server-fixed", "server-adaptive", "local"):
        cfg = load_config(None, [f"defenses.user_dp.mode={mode}"])
        seen[mode] = hides_user(user_defenses(cfg, ["a"])["a"])
    assert all("does not hide" in seen[m] for m in ("client-fixed", "server-fixed", "server-adaptive"))
    assert "noises their own update" in seen["local"] and "exact update" in seen["off"]
    cfg = load_config(None, ["defenses.secagg.enabled=true", "users=4"])
    assert "only the round's aggregate" in hides_user(user_defenses(cfg, ["a", "b", "c", "d"])["a"])
    cfg = load_config(None, ["defenses.dp_sgd.noise_multiplier=0"])
    assert "no noise" in hides_user(user_defenses(cfg, ["a"])["a"])



def test_dp_sgd_defaults_are_full_batch_steps_at_their_own_lr_and_fall_back_to_the_run() -> None:
    # The measured defaults (docs/BENCHMARKS.md): C = 20, lr 0.015, 4 full-batch steps a round (q = 1)
    cfg = load_config(None, ["defenses.dp_sgd.noise_multiplier=1"])
    dp = cfg.defenses.dp_sgd
    assert (dp.max_grad_norm, dp.lr, dp.batch_size, dp.epochs) == (20.0, 0.015, 0, 4)
    assert dp_sgd_training(cfg) == (0.015, cfg.data.photos_per_user, 4) and dp_sgd_schedule(cfg) == (1.0, 4)
    rec = user_defenses(cfg, ["a"])["a"]["dp_sgd"]
    assert (rec["lr"], rec["batch_size"], rec["epochs"], rec["sample_rate"]) == (0.015, 32, 4, 1.0)
    # 0 means the run's own setting; Poisson mini-batches bring subsampling back
    cfg = load_config(None, ["lr=0.02", "local_epochs=2", "defenses.dp_sgd.lr=0", "defenses.dp_sgd.batch_size=8",
                             "defenses.dp_sgd.epochs=0"])
    assert dp_sgd_training(cfg) == (0.02, 8, 2) and dp_sgd_schedule(cfg) == (0.25, 8)
    cfg = load_config(None, ["protocol=fedsgd", "defenses.dp_sgd.batch_size=8"])
    assert dp_sgd_schedule(cfg) == (1.0, 1) and dp_sgd_training(cfg)[0] == 0.015


def test_full_batch_dp_sgd_without_clipping_or_noise_is_plain_gradient_descent() -> None:
    from clients.training import dp_local_train, local_train
    from fl_sim.core.models import build_model, task_heads

    # Prepare: one user's 6 photos; DP-SGD's default full batch, so Poisson sampling at q = 1 takes them all
    heads = task_heads("attributes", ["a"])
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.tensor([[1, 0]]).expand(6, -1)
    plain, dp = (build_model("convnet", heads, 16, 4, 0) for _ in range(2))
    # Execute: 3 full-batch steps each, C out of reach and z = 0
    local_train(plain, images, labels, heads, protocol="fedavg", lr=0.05, epochs=3, batch_size=6, seed=0)
    r = dp_local_train(dp, images, labels, heads, protocol="fedavg", lr=0.05, epochs=3, batch_size=6, seed=0,
                       noise_multiplier=0.0, max_grad_norm=1e9, delta=1e-5, accountant="rdp", accountant_state=None)
    # Verify: the same steps as plain gradient descent, so the z = 0 point of a sweep differs from the
    # baseline only by clipping and the DP lr
    assert r.result.local_steps == 3
    for (name, a), b in zip(plain.state_dict().items(), dp.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
