"""Tactic imprint inside the federation: the server ships its target an imprint block, reads single photos out of the
target's update, and the shared model's aggregation stays honest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# synthfaces users (the bin thresholds come from its public prior split: the same kind of faces), FedSGD, one round.
BASE = ["data.dataset=synthfaces", "users=3", "rounds=1", "protocol=fedsgd", "data.image_size=16",
        "data.photos_per_user=12", "data.holdout_per_user=2", "model.width=4"]


def _run(tmp_path: Path, extra: list[str]):  # noqa: ANN202 - (result, rounds, attacks)
    from fl_sim.core.config import load_config
    from fl_sim.core.store import RunStore
    from fl_sim.federation import run_federation

    res = run_federation(load_config(None, [*BASE, *extra]), tmp_path / "runs")
    assert res.status == "finished", res.error
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    rounds, attacks = st.rounds(), st.attacks()
    st.close()
    return res, rounds, attacks


def test_imprint_recovers_the_targets_photos_and_aggregation_stays_honest(tmp_path: Path) -> None:
    res, rounds, attacks = _run(tmp_path / "m", ["attack.methods=ig", "attack.iterations=2",
                                                 "adversary.mode=malicious", "adversary.tactic=imprint",
                                                 "adversary.users=u0001"])
    target = rounds[0]["metrics"]["adversary"]["targets"][0]
    assert rounds[0]["metrics"]["adversary"]["recovered"] == [target]
    # The crafted round attacks the target only, with the tactic's read-out (the others are not attacked).
    assert [(a["user"], a["method"], a["status"]) for a in attacks] == [(target, "imprint", "finished")], attacks
    m = attacks[0]["metrics"]
    assert m["source"] == "imprint" and m["photos_total"] == 12 and len(m["photos"]) == min(12, m["candidates"])
    for e in m["photos"]:
        assert {"photo", "psnr", "ssim", "face_similarity", "recovered"} <= set(e)
    assert m["photos_recovered"] > 0.5, m["photos_recovered"]
    assert "reid_top1" in m and "mean_recovery_reid_top1" in m
    assert (res.run_dir / attacks[0]["image"]).exists()
    # The block never reaches the next global model, which is FedAvg of the shared keys: next to an honest
    # (curious) run of the same seed it differs only by the target's tiny brightness shift during training.
    final = torch.load(res.run_dir / "final_model.pt")
    assert not [k for k in final if k.startswith("imprint.")]
    honest, _, curious_attacks = _run(tmp_path / "c", ["attack.methods=ig", "attack.iterations=30",
                                                       "attack.users=u0001"])
    ref = torch.load(honest.run_dir / "final_model.pt")
    assert set(ref) == set(final)
    for k in ref:
        torch.testing.assert_close(final[k], ref[k], rtol=0, atol=1e-3, msg=k)
    # The curious server's ig on the same user recovers nothing at the per-photo level (its mean-photo PSNR is
    # far below 25 dB).
    (c,) = curious_attacks
    assert c["status"] == "finished" and c["metrics"]["psnr_mean_photo"] < 25.0


def test_inspect_shows_per_photo_recoveries(tmp_path: Path) -> None:
    from fl_sim.experiments.inspect_run import imprint_lines

    rows = [{"round": 1, "user": "u0001", "method": "imprint", "status": "finished",
             "metrics": {"photos_recovered": 0.75, "photos_total": 12, "psnr_matched_mean": 31.2, "reid_top1": 1,
                         "mean_recovery_reid_top1": 0, "candidates": 20, "candidates_mixed": 3,
                         "photos": [{"psnr": 30.0}] * 12}}]
    (line,) = imprint_lines(rows)
    assert "u0001" in line and "9/12" in line and "31.2" in line


@pytest.mark.parametrize("bad,key", [
    (["defenses.secagg.enabled=true", "defenses.secagg.reconstruction_threshold=2"], "adversary.tactic"),
    (["adversary.imprint.bins=1"], "adversary.imprint.bins"),
])
def test_imprint_on_an_unsupported_setup_is_one_line(tmp_path: Path, bad: list[str], key: str) -> None:
    from fl_sim.core.config import load_config
    from fl_sim.core.errors import ConfigError
    from fl_sim.federation import run_federation

    runs = tmp_path / "runs"
    with pytest.raises(ConfigError) as err:
        run_federation(load_config(None, [*BASE, "adversary.mode=malicious", "adversary.tactic=imprint", *bad]), runs)
    line = str(err.value)
    assert "\n" not in line and f"'{key}'" in line, line
    assert not runs.exists() or not any(runs.iterdir())
