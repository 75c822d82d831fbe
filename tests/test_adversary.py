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
