"""Intervals, identity gain and the conservative headline: known answers for the figures fl-sim prints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_sim.core.leakage import summarize
from fl_sim.core.stats import bootstrap_ci, intervals_overlap, mean_ci, paired_difference, per_unit_means


def test_bootstrap_interval_known_answers() -> None:
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)  # nothing varies: the interval is the value
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert all(np.isnan(bootstrap_ci([])))
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.5, 0.2, 20), rng.normal(0.5, 0.2, 2000)
    lo, hi = bootstrap_ci(small)
    assert lo < small.mean() < hi
    lo2, hi2 = bootstrap_ci(large)
    assert (hi2 - lo2) < (hi - lo) / 5  # ~1/sqrt(n): 100x the users, ~10x narrower
    # Normal-theory check: the 95 % interval of a mean is about +-1.96 standard errors.
    se = large.std(ddof=1) / np.sqrt(len(large))
    assert (hi2 - lo2) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_a_proportion_at_its_ceiling_or_floor_gets_the_exact_binomial_interval() -> None:
    # 20 of 20: the bootstrap has nothing to resample; Clopper-Pearson's lower bound is 0.025^(1/20).
    assert bootstrap_ci([1.0] * 20, proportion=True) == pytest.approx((0.025 ** (1 / 20), 1.0))
    assert bootstrap_ci([1.0] * 20, proportion=True)[0] == pytest.approx(0.8316, abs=1e-4)
    assert bootstrap_ci([0.0] * 20, proportion=True) == pytest.approx((0.0, 1 - 0.025 ** (1 / 20)))
    assert bootstrap_ci([1.0] * 20) == (1.0, 1.0)  # not a proportion (e.g. a mean rank of 1): unchanged
    lo, hi = bootstrap_ci([1.0] * 19 + [0.0], proportion=True)  # not all equal: the bootstrap as usual
    assert lo < 0.95 <= hi == 1.0


def test_seeds_are_pooled_per_user_not_counted_as_users() -> None:
    # 3 users x 2 seeds: three units, each the mean of its two seeds.
    per = per_unit_means([1, 0, 1, 1, 0, 0], ["a", "a", "b", "b", "c", "c"])
    assert sorted(per.tolist()) == [0.0, 0.5, 1.0]
    mean, ci = mean_ci([1, 0, 1, 1, 0, 0], ["a", "a", "b", "b", "c", "c"])
    assert mean == pytest.approx(0.5) and ci[0] <= 0.5 <= ci[1]


def test_paired_difference_calls_a_lead_only_when_its_interval_excludes_zero() -> None:
    b = {f"u{i}": float(i % 3) for i in range(20)}
    up = paired_difference({u: v + 1.0 for u, v in b.items()}, b)
    assert up["difference"] == pytest.approx(1.0) and up["significant"] and up["ci"] == [1.0, 1.0]
    same = paired_difference(dict(b), b)
    assert same["difference"] == 0.0 and not same["significant"]
    rng = np.random.default_rng(0)
    noisy = paired_difference({u: v + rng.normal(0, 1) for u, v in b.items()}, b)
    assert noisy["ci"][0] < noisy["difference"] < noisy["ci"][1]
    assert intervals_overlap([0, 1], [1, 2]) and not intervals_overlap([0, 0.4], [0.5, 1])


def test_summary_headline_is_the_lower_evaluator_and_disagreement_is_flagged() -> None:
    users = [f"u{i}" for i in range(10)]
    rows = [{"a_reid_top1": 1, "b_reid_top1": 0, "a_identity_gain": 0.3, "b_identity_gain": 0.1} for _ in users]
    s = summarize(rows, users, evaluators=("a", "b"))
    assert s["reid_top1"] == 0.0 and s["reid_top1_evaluator"] == "b" and s["reid_top1_disagree"]
    assert s["identity_gain"] == pytest.approx(0.1) and s["identity_gain_evaluator"] == "b"
    agree = summarize([{"a_reid_top1": 1, "b_reid_top1": 1} for _ in users], users, evaluators=("a", "b"))
    assert agree["reid_top1"] == 1.0 and not agree["reid_top1_disagree"]


@pytest.fixture(scope="module")
def truth():  # noqa: ANN201 - a UserTruth on 5 embedded users, both evaluators
    from fl_sim.core.data import open_dataset
    from fl_sim.core.scoring import UserTruth

    ds = open_dataset("synthfaces")
    users = [r.user for r in ds.users()[:5]]
    photos = {u: ds.photos(u, 32)[:8] for u in users}
    attrs = {u: {"gender": "female" if i else None, "age_band": None} for i, u in enumerate(users)}
    return UserTruth(users, photos, attrs)


def test_identity_gain_is_zero_for_the_average_face_and_positive_for_the_users_own_photo(truth) -> None:  # noqa: ANN001
    from fl_sim.core.scoring import others_averages, score

    u = truth.users
    others = others_averages([truth.photos[w].mean(0) for w in u])
    # Those are the other users' mean photos, averaged (to float rounding), one per user.
    plain = torch.stack([torch.stack([truth.photos[v].mean(0) for v in u if v != w]).mean(0) for w in u])
    assert torch.allclose(others, plain, atol=1e-6)
    avg_rows = score(others, list(u), truth)
    for ev in truth.evaluators:  # the average of the other users *is* the zero of identity gain
        assert all(r[f"{ev}_identity_gain"] == pytest.approx(0.0, abs=1e-5) for r in avg_rows)
    own = score(torch.stack([truth.photos[w][0] for w in u]), list(u), truth)
    for ev in truth.evaluators:
        assert np.mean([r[f"{ev}_identity_gain"] for r in own]) > 0.05
        assert np.mean([r[f"{ev}_reid_top1"] for r in own]) >= 0.8
    # The headline never exceeds either evaluator.
    assert all(r["reid_top1"] == min(r["sface_reid_top1"], r["dlib_reid_top1"]) for r in own)
    assert all(r["identity_gain"] <= min(r["sface_identity_gain"], r["dlib_identity_gain"]) + 1e-12 for r in own)


def test_unknown_truth_is_null_never_wrong(truth) -> None:  # noqa: ANN001
    from fl_sim.core.scoring import score

    rows = score(torch.stack([truth.photos[w][0] for w in truth.users]), list(truth.users), truth)
    assert rows[0]["gender_correct"] is None and rows[1]["gender_correct"] in (0, 1)
    assert all(r["age_band_correct"] is None for r in rows)
