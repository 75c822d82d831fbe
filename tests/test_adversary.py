"""The actively malicious server: tactics as plugins, model inconsistency's known answers, a federation under it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clients.training import local_train
from fl_sim.core.adversary import ModelFacts, make_tactic, repaired_global
from fl_sim.core.models import build_model, task_heads


def _state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _round(name: str, protocol: str, norm: str = "group"):  # noqa: ANN202 - (tactic, sent, replies, examples, agg, global)
    """One crafted round on a tiny model: 4 users with their own photos, labels and batch sizes; the target user01."""
    heads = task_heads("attributes", [])
    model = build_model(name, heads, 16, 4, seed=0, norm=norm)
    facts = ModelFacts(name, tuple(n for n, _ in model.named_parameters()))
    tactic = make_tactic("inconsistency", facts)
    global_state = _state(model)
    users = ["user00", "user01", "user02", "user03"]
    sent = tactic.craft(1, global_state, users, ["user01"])
    gen = torch.Generator().manual_seed(1)
    replies, examples = {}, {}
    for k, u in enumerate(users):
        n = 3 + k
        images = torch.rand(n, 3, 16, 16, generator=gen)
        labels = torch.tensor([[k % 2, k % 3]] * n)
        local = build_model(name, heads, 16, 4, seed=0, norm=norm)
        local.load_state_dict({key: torch.from_numpy(v.copy()) for key, v in sent[u].items()})
        local_train(local, images, labels, heads, protocol=protocol, lr=0.1, epochs=2, batch_size=2, seed=k)
        replies[u], examples[u] = _state(local), n
    # What Flower's FedAvg (and SecAgg+) hands the server: the float32 weighted mean, nothing per user.
    total = sum(examples.values())
    agg = {key: sum(replies[u][key] * (examples[u] / total) for u in users) for key in global_state}
    return tactic, facts, sent, replies, examples, agg, global_state


@pytest.mark.parametrize("name,protocol,norm", [("convnet", "fedsgd", "group"), ("convnet", "fedavg", "group"),
                                                ("convnet", "fedsgd", "batch"), ("mlp", "fedavg", "group"),
                                                ("resnet", "fedsgd", "group")])
def test_inconsistency_aggregate_is_the_targets_update(name: str, protocol: str, norm: str) -> None:
    tactic, facts, sent, replies, examples, agg, global_state = _round(name, protocol, norm)
    exact = [k for k in facts.parameters if k not in tactic.inexact()]
    assert tactic.inexact() == (facts.parameters[-1],)  # only the classifier's bias mixes
    # The others' updates through the dead-ReLU model are exactly zero in every exact layer (not merely small)...
    for u in ("user00", "user02", "user03"):
        assert all(np.array_equal(sent[u][k], replies[u][k]) for k in exact), u
    assert all(np.array_equal(sent["user01"][k], global_state[k]) for k in global_state)  # the target: the true model
    # ...so the aggregate minus what was sent, over the target's FedAvg weight, is the target's own update.
    (rec,) = tactic.recover(1, sent, examples, agg, global_state=global_state, targets=["user01"])
    assert rec.user == "user01" and rec.exact == tuple(exact)
    truth = {k: global_state[k].astype(np.float64) - replies["user01"][k] for k in facts.parameters}
    assert all(np.abs(truth[k]).max() > 0 for k in exact if "weight" in k)  # a real update, not zeros
    for k in exact:
        np.testing.assert_allclose(rec.update[k], truth[k], rtol=0, atol=2e-6, err_msg=k)
    assert all(np.array_equal(rec.weights[k], global_state[k]) for k in global_state)
    # The next global model: the true one minus the weighted updates, never the dead parameters.
    nxt = repaired_global(global_state, sent, examples, agg)
    w = examples["user01"] / sum(examples.values())
    for k in exact:
        np.testing.assert_allclose(nxt[k], global_state[k] - w * truth[k], rtol=0, atol=2e-6, err_msg=k)


TINY = ["data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2", "model.width=4"]


def test_a_federation_under_inconsistency_attacks_the_recovered_update(tmp_path: Path) -> None:
    from fl_sim.core.config import load_config
    from fl_sim.core.store import RunStore
    from fl_sim.federation import run_federation
    from tests.conftest import make_face_folder

    data = make_face_folder(tmp_path / "faces", users=3, photos=6)
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=3", "rounds=2", "protocol=fedsgd", *TINY,
                             "attack.methods=ig", "attack.iterations=3", "attack.rounds=2",
                             "adversary.mode=malicious", "adversary.tactic=inconsistency", "adversary.users=user01",
                             "adversary.rounds=1"])
    res = run_federation(cfg, tmp_path / "runs")
    assert res.status == "finished", res.error
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    rounds, updates, attacks = st.rounds(), st.updates(), st.attacks()
    st.close()
    # The store says which tactic ran on whom, in the crafted round only.
    assert rounds[0]["metrics"]["adversary"] == {"tactic": "inconsistency", "targets": ["user01"],
                                                 "crafted": ["user00", "user02"], "recovered": ["user01"]}
    assert "adversary" not in rounds[1]["metrics"]
    # Round 1: one attack, on the target, run on the update recovered from the aggregate (attack.rounds says 2, but
    # the tactic's round is attacked: it chose its target). Round 2 (honest): every user's own reply, as before.
    r1 = [a for a in attacks if a["round"] == 1]
    assert [(a["user"], a["status"]) for a in r1] == [("user01", "finished")], r1
    assert r1[0]["metrics"]["source"] == "inconsistency" and r1[0]["metrics"]["inexact_layers"] == ["classifier.bias"]
    r2 = sorted((a["user"], a["status"], "source" in a["metrics"]) for a in attacks if a["round"] == 2)
    assert r2 == [(u, "finished", False) for u in ("user00", "user01", "user02")]
    # The others' updates are against the dead model they got: only the classifier's bias moved.
    for u in updates:
        if u["round"] == 1 and u["user"] != "user01":
            moved = {k for k, v in u["layer_norms"].items() if v > 0}
            assert moved == {"classifier.bias"}, (u["user"], moved)
    # The next model is the true one minus the weighted updates: no user's dead parameters leak into it.
    final = torch.load(res.run_dir / "final_model.pt")
    assert bool((final["features.7.weight"] != 0).all())


def test_under_secagg_the_tactic_recovers_the_target_from_the_unmasked_aggregate(tmp_path: Path) -> None:
    from fl_sim.core.config import load_config
    from fl_sim.core.store import RunStore
    from fl_sim.federation import run_federation
    from tests.conftest import make_face_folder

    data = make_face_folder(tmp_path / "faces", users=3, photos=6)
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=3", "rounds=1", "protocol=fedsgd", *TINY,
                             "defenses.secagg.enabled=true", "defenses.secagg.reconstruction_threshold=2",
                             "attack.methods=ig", "attack.iterations=3",
                             "adversary.mode=malicious", "adversary.tactic=inconsistency", "adversary.users=user02"])
    res = run_federation(cfg, tmp_path / "runs")
    assert res.status == "finished", res.error
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    rounds, updates, attacks = st.rounds(), st.updates(), st.attacks()
    st.close()
    assert rounds[0]["metrics"]["adversary"]["targets"] == ["user02"]
    assert all(u["user"] is None for u in updates)  # the server still holds only the aggregate...
    # ...yet the attack is on user02, from the update the tactic read out of it.
    assert [(a["user"], a["status"], a["metrics"]["source"]) for a in attacks] == [("user02", "finished",
                                                                                     "inconsistency")]
    final = torch.load(res.run_dir / "final_model.pt")
    assert bool((final["features.7.weight"] != 0).all())


@pytest.mark.parametrize("bad,key", [
    (["adversary.mode=malicious"], "adversary.tactic"),
    (["adversary.mode=malicious", "adversary.tactic=nosuch"], "adversary.tactic"),
    (["adversary.tactic=inconsistency"], "adversary.tactic"),
    (["adversary.mode=evil"], "adversary.mode"),
    (["adversary.mode=malicious", "adversary.tactic=inconsistency", "adversary.users=user09"], "adversary.users"),
    (["adversary.mode=malicious", "adversary.tactic=inconsistency", "adversary.users=sample:x"], "adversary.users"),
    (["adversary.mode=malicious", "adversary.tactic=inconsistency", "adversary.rounds=3"], "adversary.rounds"),
    (["adversary.mode=malicious", "adversary.tactic=inconsistency", "defenses.user_dp.mode=server-fixed"],
     "adversary.mode"),
])
def test_a_bad_adversary_is_one_line_naming_the_key_before_any_run_folder(tmp_path: Path, bad: list[str],
                                                                          key: str) -> None:
    from fl_sim.core.config import load_config
    from fl_sim.core.errors import ConfigError
    from fl_sim.federation import run_federation
    from tests.conftest import make_face_folder

    data = make_face_folder(tmp_path / "faces", users=3, photos=6)
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError) as err:
        run_federation(load_config(None, [f"data.dataset=folder:{data}", "users=3", "rounds=2", *TINY, *bad]), runs)
    line = str(err.value)
    assert "\n" not in line and f"'{key}'" in line, line
    assert not runs.exists() or not any(runs.iterdir())
