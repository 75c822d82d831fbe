"""Models and local training: shapes, Opacus-safe norms, exact FedSGD step, label handling."""

from __future__ import annotations

import pytest
import torch

from clients.training import local_train
from fl_sim.core.models import evaluate
from fl_sim.core.configkeys import documented_keys
from fl_sim.core.models import MODELS, build_model, task_heads, task_loss, user_labels


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("size", [16, 32])
def test_models_give_one_logit_per_class_and_use_no_batchnorm(name: str, size: int) -> None:
    heads = task_heads("attributes", [])
    model = build_model(name, heads, size, 8, seed=0)
    assert model(torch.zeros(3, 3, size, size)).shape == (3, 5)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_build_model_is_deterministic_in_seed() -> None:
    heads = task_heads("identity", ["a", "b", "c"])
    a, b, c = (build_model("convnet", heads, 16, 4, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_fedsgd_is_exactly_one_full_batch_gradient_step() -> None:
    heads = task_heads("attributes", [])
    model = build_model("mlp", heads, 8, 2, seed=0)
    x = torch.randn(6, 3, 8, 8)
    y = torch.tensor([[1, 2]] * 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = build_model("mlp", heads, 8, 2, seed=0)
    task_loss(ref(x), y, heads).backward()
    res = local_train(model, x, y, heads, protocol="fedsgd", lr=0.1, epochs=3, batch_size=2, seed=0)
    assert res.local_steps == 1 and res.num_examples == 6
    for (k, v), p in zip(model.state_dict().items(), ref.parameters()):
        torch.testing.assert_close(v, before[k] - 0.1 * p.grad)


def test_fedavg_runs_epochs_of_minibatches() -> None:
    heads = task_heads("attributes", [])
    model = build_model("convnet", heads, 8, 2, seed=0)
    res = local_train(model, torch.randn(10, 3, 8, 8), torch.tensor([[0, 1]] * 10), heads, protocol="fedavg",
                      lr=0.01, epochs=2, batch_size=4, seed=0)
    assert res.local_steps == 6  # ceil(10 / 4) * 2


def test_labels_and_loss_with_unknown_attributes() -> None:
    heads = task_heads("attributes", [])
    assert user_labels(heads, "u", {"gender": "male", "age_band": "45+"}) == [1, 2]
    assert user_labels(heads, "u", {"gender": None}) == [-1, -1]
    logits = torch.randn(4, 5, requires_grad=True)
    loss = task_loss(logits, torch.full((4, 2), -1), heads)
    loss.backward()  # no labels: zero loss that still backpropagates
    assert float(loss.detach()) == 0.0 and logits.grad is not None
    ident = task_heads("identity", ["a", "b"])
    assert user_labels(ident, "b", {}) == [1]


def test_evaluate_reports_per_head_accuracy() -> None:
    heads = task_heads("attributes", [])
    model = build_model("convnet", heads, 8, 2, seed=0)
    res = evaluate(model, torch.randn(4, 3, 8, 8), torch.tensor([[0, 0]] * 4), heads)
    assert set(res) == {"loss", "acc_gender", "acc_age_band", "accuracy"}
    assert 0.0 <= res["accuracy"] <= 1.0


def test_every_config_key_is_documented() -> None:
    keys = documented_keys()
    assert len(keys) >= 15 and all(doc.strip() for _, _, doc in keys)
