"""Typed records across client -> server -> store, their one Flower translation, and the defense registry."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from fl_sim.core.config import RunConfig
from fl_sim.core.configkeys import documented_keys
from fl_sim.core.defenses import DEFENSES, sections
from fl_sim.core.flwr_records import fitres_content, read_fitres, read_update, update_content
from fl_sim.core.records import AttackResult, ClientUpdate, PrivacyFigures


def _update(privacy: PrivacyFigures | None) -> ClientUpdate:
    arrays = {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor(3)}
    return ClientUpdate(user="u1", round=2, arrays=arrays, num_examples=4, local_steps=2, lr=0.015, loss=0.5,
                        labelled_examples=4, partition_id=1, defenses=("dp_sgd",) if privacy else (), privacy=privacy)


def test_a_reply_round_trips_through_flowers_records_with_the_wire_keys_of_before() -> None:
    # Prepare: one DP-SGD user (epsilon known) and one undefended user
    dp = _update(PrivacyFigures(1.3, 0.5, 1e-5, 0.5, 4, 2.5))
    plain = _update(None)
    # Execute
    dp_content, plain_content = update_content(dp), update_content(plain)
    back = read_update(dp_content, user="u1", round=2, defenses=("dp_sgd",))
    # Verify: the metrics have the same keys for every user (FedAvg aggregates only those); privacy apart
    assert list(dp_content["metrics"]) == list(plain_content["metrics"]) == [
        "num-examples", "local-steps", "lr", "loss", "labelled-examples", "partition-id"]
    assert list(dp_content["privacy"]) == ["dp-noise-multiplier", "dp-max-grad-norm", "dp-delta", "dp-sample-rate",
                                           "dp-steps", "dp-epsilon"]
    assert not list(plain_content["privacy"])
    assert dataclasses.replace(back, arrays=dp.arrays) == dp
    assert all(np.array_equal(back.arrays[k], dp.arrays[k].numpy()) for k in dp.arrays)
    # What the store keeps: metrics then privacy figures, in that order
    assert list(back.stored_metrics()) == [*dp_content["metrics"], *dp_content["privacy"]]


def test_z_zero_reports_no_epsilon_and_the_legacy_fitres_carries_every_figure() -> None:
    from flwr.compat.common import recorddict_compat as compat

    up = _update(PrivacyFigures(0.0, 1.0, 1e-5, 1.0, 1, math.inf))
    assert "dp-epsilon" not in up.privacy_metrics()
    res = compat.recorddict_to_fitres(fitres_content(up, ["w", "n"]), keep_input=True)
    assert res.num_examples == 4 and dict(res.metrics) == up.stored_metrics()
    back = read_fitres(res, round=2)
    assert (back.user, back.num_examples, back.local_steps, back.loss, back.arrays) == (None, 4, 2, 0.5, {})


def test_an_aggregate_lists_its_size_first_and_no_user_figures() -> None:
    agg = ClientUpdate(user=None, round=1, arrays={"w": np.zeros(2)}, num_examples=12, local_steps=1, lr=0.01,
                       loss=0.2, aggregate_size=3)
    assert list(agg.stored_metrics()) == ["aggregate_size", "num-examples", "local-steps", "lr", "loss"]


def test_no_signal_reasons() -> None:
    glob = {"w": np.ones(2)}
    same = ClientUpdate(user="u", round=1, arrays={"w": np.ones(2)}, num_examples=1, local_steps=1, lr=0.1, loss=0.0)
    assert same.no_signal(glob) == "no signal: the update is exactly zero (norm 0)"
    unlabelled = dataclasses.replace(same, arrays={"w": np.zeros(2)}, labelled_examples=0)
    assert "no labelled example" in (unlabelled.no_signal(glob) or "")
    assert dataclasses.replace(unlabelled, labelled_examples=None).no_signal(glob) is None
    # Hand-made metric dicts (tests, benchmarks) read with the defaults given
    made = ClientUpdate.from_metrics({"lr": 0.01}, user="u", round=1, arrays={}, num_examples=32, lr=0.5)
    assert (made.num_examples, made.lr, made.local_steps) == (32, 0.01, 1) and math.isnan(made.loss)


def test_attack_results_compare_without_their_trace() -> None:
    assert AttackResult("u", "ig", "failed", error="x", trace="tb") == AttackResult("u", "ig", "failed", error="x")


def test_the_defenses_section_is_assembled_from_the_registry() -> None:
    names = [d.name for d in sections()]
    assert names == ["dp_sgd", "user_dp", "compression", "secagg", "model_check"]  # the config order of before
    fields = dataclasses.fields(RunConfig().defenses)
    assert [f.name for f in fields] == names
    assert [f.metadata["doc"] for f in fields] == [DEFENSES.get(n).help for n in names]
    keys = [k for k, _, _ in documented_keys() if k.startswith("defenses.")]
    assert keys[0] == "defenses.dp_sgd.enabled" and keys[-1] == "defenses.model_check.wait_s"
