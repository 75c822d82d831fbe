"""The attack bench's shape: a row per method x evaluator x batch, intervals, null controls, pooled seeds."""

from __future__ import annotations

import pytest

from fl_sim.experiments.attack_bench import attack_markdown, bench_attack


@pytest.fixture(scope="module")
def res() -> dict:
    return bench_attack(users=3, batch_sizes=[4], methods=["dlg", "ig"], rounds=[0], protocol="fedsgd",
                        iterations=2, seeds=[0, 1])


def test_rows_carry_both_evaluators_intervals_and_null_controls(res: dict) -> None:
    rows = res["rows"]
    assert {(r["method"], r["evaluator"]) for r in rows} == {(m, e) for m in ("dlg", "ig") for e in ("sface", "dlib")}
    for r in rows:
        assert r["batch_size"] == 4 and r["seeds"] == [0, 1] and r["users"] == 3
        for key in ("reid_top1", "identity_gain", "mean_rank", "null_reid_top1", "identity_gain_over_null"):
            lo, hi = r[f"{key}_ci"]
            assert lo - 1e-9 <= r[key] <= hi + 1e-9, key
        assert 0 <= r["null_reid_top1"] <= 1 and r["chance_reid_top1"] == pytest.approx(1 / 3)
        assert {"null_zero_reid_top1", "null_outsider_reid_top1"} <= set(r)
        assert 1 <= r["mean_rank"] <= 3
    # The outsiders are real identities of the dataset that are not candidates.
    assert res["outsiders"] and not set(res["outsiders"]) & set(res["users"])


def test_methods_are_compared_pairwise_and_a_lead_needs_an_interval_excluding_zero(res: dict) -> None:
    comps = res["comparisons"]
    assert {(c["evaluator"], c["metric"]) for c in comps} == {(e, m) for e in ("sface", "dlib")
                                                               for m in ("reid_top1", "identity_gain")}
    for c in comps:
        assert (c["lead"] is not None) == c["significant"]
        if c["significant"]:
            assert c["ci"][0] > 0 or c["ci"][1] < 0
    text = attack_markdown(res)
    assert "null re-id" in text and "sface" in text and "dlib" in text and "[" in text


def test_64px_the_model_photos_and_prior_follow_the_size() -> None:
    res = bench_attack(users=2, batch_sizes=[4], methods=["diffusion"], rounds=[0], protocol="fedsgd",
                       iterations=2, seeds=[0], nulls=False, size=64)
    assert res["image_size"] == 64 and res["prior"] == "faces64"
    assert all(img.shape[-2:] == (64, 64) for img in res["images"]["diffusion"][0].values())
    assert {r["batch_size"] for r in res["rows"]} == {4}
