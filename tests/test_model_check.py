"""The client-side defense model_check: digests in a transparency log catch model inconsistency, a parameter check
catches imprint-like layers, and with action=refuse the client sends back no update."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clients.training import local_train
from fl_sim.core.defenses import MODEL_CHECK, Received, TransparencyLog, imprint_like, model_digest
from fl_sim.core.models import build_model, task_heads

TINY = ["data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2", "model.width=4"]


def _state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# -- (4) the digest -------------------------------------------------------------------------------------------
def test_the_digest_is_stable_and_any_change_of_one_value_changes_it() -> None:
    model = build_model("convnet", task_heads("attributes", []), 16, 4, seed=0, norm="group")
    a = _state(model)
    d = model_digest(a)
    assert d == model_digest({k: a[k].copy() for k in reversed(list(a))})  # key order does not matter
    assert d == model_digest({k: torch.from_numpy(v.copy()) for k, v in a.items()})  # nor torch vs numpy
    assert d == model_digest({k: v.astype(v.dtype.newbyteorder(">")) for k, v in a.items()})  # nor byte order
    rng = np.random.default_rng(0)
    for k in list(a)[:: max(1, len(a) // 6)]:
        if not np.issubdtype(a[k].dtype, np.floating) or not a[k].size:
            continue
        b = {key: v.copy() for key, v in a.items()}
        flat = b[k].reshape(-1)
        i = int(rng.integers(flat.size))
        flat[i] = np.nextafter(flat[i], np.float32(np.inf))  # one value, by one ulp
        assert model_digest(b) != d, k
    b = dict(a)
    b["extra.weight"] = np.zeros(1, np.float32)
    assert model_digest(b) != d  # an extra tensor
    first = next(iter(a))
    assert model_digest({**a, first: a[first].reshape(-1)}) != d  # the same values in another shape


# -- (5) the imprint check ------------------------------------------------------------------------------------
def _expected(state: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("name", ["convnet", "mlp", "resnet"])
@pytest.mark.parametrize("norm", ["group", "batch"])
def test_the_imprint_check_passes_honest_models_at_init_and_after_training(name: str, norm: str) -> None:
    heads = task_heads("attributes", [])
    for seed in (0, 1):
        model = build_model(name, heads, 16, 4, seed=seed, norm=norm)
        state = _state(model)
        assert imprint_like(state, _expected(state)) == [], (name, seed)
        gen = torch.Generator().manual_seed(seed)
        images = torch.rand(8, 3, 16, 16, generator=gen)
        labels = torch.tensor([[k % 2, k % 3] for k in range(8)])
        for protocol in ("fedsgd", "fedavg"):
            local_train(model, images, labels, heads, protocol=protocol, lr=0.1, epochs=2, batch_size=4, seed=seed)
            trained = _state(model)
            assert imprint_like(trained, _expected(state)) == [], (name, seed, protocol)


def test_the_imprint_check_flags_identical_rows_and_unknown_tensors() -> None:
    model = build_model("mlp", task_heads("attributes", []), 16, 4, seed=0, norm="group")
    state = _state(model)
    expected = _expected(state)
    matrix = next(k for k, v in state.items() if v.ndim == 2 and v.shape[0] >= 2)
    # An imprint layer: every row the same measurement vector (its biases would be minus ascending quantiles).
    crafted = dict(state)
    crafted[matrix] = np.tile(np.random.default_rng(0).normal(size=(1, state[matrix].shape[1])),
                              (state[matrix].shape[0], 1)).astype(np.float32)
    assert imprint_like(crafted, expected) == [matrix]
    # A layer shipped in front of the model: a tensor the client's model does not have.
    bins = 6
    extra = {"imprint.weight": np.tile(np.ones((1, 3 * 16 * 16), np.float32), (bins, 1)),
             "imprint.bias": -np.linspace(0.1, 0.9, bins).astype(np.float32), **state}
    assert sorted(imprint_like(extra, expected)) == ["imprint.bias", "imprint.weight"]
    # A zeroed matrix (e.g. inconsistency's dead layer on the mlp) is not a measurement: not imprint-like.
    assert imprint_like({**state, matrix: np.zeros_like(state[matrix])}, expected) == []


def test_the_check_logs_compares_and_refuses(tmp_path: Path) -> None:
    model = build_model("convnet", task_heads("attributes", []), 16, 4, seed=0, norm="group")
    state = _state(model)
    other = {**state, "features.7.weight": np.zeros_like(state["features.7.weight"])}
    rec = {"action": "refuse", "imprint_check": True, "quorum": 3}

    def check(user: str, arrays: dict[str, np.ndarray]) -> tuple[dict[str, object], bool]:
        v = MODEL_CHECK.check_received(rec, Received(1, user, arrays, _expected(state), run_dir=str(tmp_path),
                                                     run_id="r"))
        return v.record, v.refuse

    first, refused = check("user00", state)
    assert first["saw"] == 0 and not first["inconsistent"] and not refused  # the first to log cannot compare
    second, refused = check("user01", other)
    assert second["saw"] == 1 and second["inconsistent"] and refused and second["differs_from"] == ["user00"]
    third, refused = check("user02", state)
    assert third["saw"] == 2 and third["inconsistent"] and third["differs_from"] == ["user01"]
    entries = TransparencyLog(tmp_path / "transparency.sqlite").entries()
    assert [e["user"] for e in entries] == ["user00", "user01", "user02"]
    check("user00", other)  # append-only: a second entry for the round is ignored
    assert len(TransparencyLog(tmp_path / "transparency.sqlite").entries()) == 3


# -- the federation -------------------------------------------------------------------------------------------
def _run(tmp_path: Path, extra: list[str], users: int = 3, rounds: int = 2, name: str = "runs"):  # noqa: ANN202
    from fl_sim.core.config import load_config
    from fl_sim.core.store import RunStore
    from fl_sim.federation import run_federation
    from tests.conftest import make_face_folder

    data = tmp_path / "faces"
    if not data.exists():
        make_face_folder(data, users=users, photos=6)
    cfg = load_config(None, [f"data.dataset=folder:{data}", f"users={users}", f"rounds={rounds}", "protocol=fedsgd",
                             *TINY, *extra])
    res = run_federation(cfg, tmp_path / name)
    assert res.status == "finished", res.error
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    out = {"rounds": st.rounds(), "updates": st.updates(), "attacks": st.attacks(),
           "checks": st.checks("model_check"), "dir": res.run_dir}
    st.close()
    return out


def test_honest_runs_raise_no_flag_and_train_the_same(tmp_path: Path) -> None:
    on = _run(tmp_path, ["defenses.model_check.enabled=true"], rounds=1, name="on")
    off = _run(tmp_path, [], rounds=1, name="off")
    # Every user logged and checked every round; nobody flagged anything (0 false positives).
    assert sorted(on["checks"]) == [1]
    for rnd, by_user in on["checks"].items():
        assert sorted(by_user) == ["user00", "user01", "user02"]
        assert all(not r["inconsistent"] and not r["imprint"] and not r["refused"] for r in by_user.values()), rnd
        assert sorted(r["saw"] for r in by_user.values()) == [0, 1, 2]  # one at a time: arrival order
        assert len({r["digest"] for r in by_user.values()}) == 1
    from fl_sim.experiments.reports import inspect_report

    assert inspect_report(on["dir"])[0]["detected"] == 0.0 and "detection" not in inspect_report(off["dir"])[0]
    # The same training: updates, losses and the final model are identical; only the records differ.
    for a, b in zip(on["updates"], off["updates"], strict=True):
        assert (a["round"], a["user"], a["update_norm"], a["loss"]) == (b["round"], b["user"], b["update_norm"],
                                                                        b["loss"])
        assert {k: v for k, v in a["metrics"].items() if k != "model_check"} == b["metrics"]
    f_on, f_off = torch.load(on["dir"] / "final_model.pt"), torch.load(off["dir"] / "final_model.pt")
    assert all(torch.equal(f_on[k], f_off[k]) for k in f_off)


MALICIOUS = ["adversary.mode=malicious", "adversary.tactic=inconsistency", "adversary.users=user01",
             "attack.methods=ig", "attack.iterations=3"]


def test_inconsistency_is_flagged_in_every_crafted_round(tmp_path: Path) -> None:
    run = _run(tmp_path, [*MALICIOUS, "defenses.model_check.enabled=true"], users=4)
    for rnd in (1, 2):
        assert run["rounds"][rnd - 1]["metrics"]["adversary"]["targets"] == ["user01"]
        by_user = run["checks"][rnd]
        assert sorted(by_user) == ["user00", "user01", "user02", "user03"]
        flagged = sorted(u for u, r in by_user.items() if r["inconsistent"])
        assert flagged, rnd  # at least one client saw the mismatch
        # Who could compare: the k-th client to log saw at least k - 1 other digests (two clients on concurrent
        # actors may both log before either reads, so equal counts happen), and any of them flags the round.
        saw = sorted(r["saw"] for r in by_user.values())
        assert all(i <= n <= 3 for i, n in enumerate(saw)), saw
        assert all(by_user[u]["saw"] > 0 for u in flagged)
        assert len({r["digest"] for r in by_user.values()}) == 2  # two models went out
        assert not any(r["refused"] for r in by_user.values())
    # inspect shows it per round, beside the attacks; the share of rounds flagged is what the sweep reports.
    from fl_sim.experiments.reports import inspect_report
    from fl_sim.experiments.sweep import run_summary

    doc, lines = inspect_report(run["dir"])
    assert doc["detected"] == 1.0 and all(r["could_compare"] >= 3 for r in doc["detection"])
    assert sum("model check (inconsistency on user01)" in str(x) for x in lines) == 2, lines
    assert run_summary(run["dir"])["detected"] == 1.0
    # action=flag changes nothing: the attack runs on the recovered update.
    assert {(a["round"], a["user"], a["status"]) for a in run["attacks"]} == {(1, "user01", "finished"),
                                                                              (2, "user01", "finished")}


def test_with_refuse_the_target_who_sees_the_mismatch_sends_no_update(tmp_path: Path) -> None:
    # Clients run concurrently (4 actors) and wait until every client of the round logged: all can compare.
    run = _run(tmp_path, [*MALICIOUS, "defenses.model_check.enabled=true", "defenses.model_check.action=refuse",
                          "defenses.model_check.wait_s=30", "simulation.client_cpus=0.25"], users=4, rounds=1)
    by_user = run["checks"][1]
    assert all(r["saw"] == 3 and r["inconsistent"] and r["refused"] for r in by_user.values()), by_user
    # Every reply is what its user was sent: the target's update is zero...
    target = next(u for u in run["updates"] if u["user"] == "user01")
    assert target["update_norm"] == 0.0 and target["metrics"]["local-steps"] == 0
    # ...so what the tactic recovers holds nothing of the target's photos: no attack on a real update.
    (attack,) = run["attacks"]
    assert attack["user"] == "user01" and attack["metrics"].get("target_refused") is True
    # Every user refused, so the aggregate is exactly what was sent: the recovered update is zero, never attacked.
    assert attack["status"] == "no-signal" and attack["metrics"]["source"] == "inconsistency", attack
