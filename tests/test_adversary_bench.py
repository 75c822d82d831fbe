"""`fl-sim bench adversary`: one cell end to end through the CLI (a real federation under SecAgg+), and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


def _cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    import fl_sim.cli as cli

    monkeypatch.setattr("sys.argv", ["fl-sim", "bench", "adversary", *args])
    with pytest.raises(SystemExit) as ex:
        cli.main()
    got = capsys.readouterr()
    return int(ex.value.code or 0), got.out, got.err


@pytest.mark.parametrize("args, where", [
    (["--cells", "imprint/secagg"], "--cells"),  # imprint needs one user's update: not in the grid under SecAgg+
    (["--batch-sizes", "90"], "--batch-sizes"),  # more photos than an embedded identity holds
    (["--users", "20", "--targets", "21"], "--targets"),
    (["--methods", "ig,nope"], "--methods"),
    (["--set", "model.name=nope"], "model.name"),
    (["--from", "/nonexistent/adversary.json"], "--from"),
])
def test_bad_input_is_one_line_before_anything_runs(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path, args: list[str], where: str) -> None:
    code, out, err = _cli(capsys, monkeypatch, *args, "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and where in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


def test_inconsistency_under_secagg_is_a_row_with_leakage_detection_and_cost(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out, err = _cli(capsys, monkeypatch, "--users", "8", "--batch-sizes", "8", "--warmup", "1", "--targets", "2",
                          "--methods", "ig", "--iterations", "3", "--cells", "inconsistency/secagg",
                          "--set", "data.image_size=16", "--set", "model.width=4",
                          "--runs-dir", str(tmp_path / "runs"), "--json")
    assert code == 0, err
    res = json.loads(out)
    (row,) = res["rows"]
    assert (row["tactic"], row["defense"], row["batch_size"]) == ("inconsistency", "secagg", 8)
    # Two crafted rounds, one target each; the attack ran on each recovered update.
    assert row["tactic_rounds"] == 2 and row["attacked_users"] == 2 and row["statuses"] == {"finished": 2}
    assert 0.0 <= row["reid_top1"] <= 1.0 and row["reid_top1_ci"][0] <= row["reid_top1"] <= row["reid_top1_ci"][1]
    assert row["reid_chance"] == pytest.approx(1 / 8)
    # The clients' checks travel beside SecAgg+'s masked weights: two digests in each crafted round are seen by
    # at least the client logging second; the honest warm-up round flags nobody.
    assert row["detected"] == 1.0 and 0 < row["clients_detecting"] <= 1
    assert row["false_positive_rate"] == 0.0 and row["honest_rounds"] == 1
    assert res["false_positives"] == {"honest_rounds": 1, "flagged": 0, "rate": 0.0}
    assert row["seconds_per_user"] > 0 and row["wall_s"] > 0
    (ref,) = res["references"]  # what 25 dB means on these faces: the user's mean photo as the one candidate
    assert ref["batch_size"] == 8 and 0 <= ref["mean_photo_photos_recovered"] <= 1 / 8 and ref["users"] == 8
    assert (tmp_path / "runs" / row["run_id"] / "store.sqlite").exists()
    # The result is kept beside its runs; --from re-renders it (table, figure) without running anything.
    saved = Path(res["saved"])
    assert saved.parent == (tmp_path / "runs").resolve() and json.loads(saved.read_text())["rows"] == res["rows"]
    code, out, err = _cli(capsys, monkeypatch, "--from", str(saved), "--figure", str(tmp_path / "fig.png"),
                          "--doc", str(tmp_path / "B.md"))
    assert code == 0, err
    assert "inconsistency" in out and (tmp_path / "fig.png").stat().st_size > 0
    assert "<!-- bench-adversary:fedsgd:b8:begin -->" in (tmp_path / "B.md").read_text()


def test_pair_psnr_and_the_flagged_count_known_answers() -> None:
    from fl_sim.core.scoring import pair_psnr
    from fl_sim.experiments.adversary_report import flagged_count

    zero = torch.zeros(1, 3, 4, 4)
    table = pair_psnr(zero, torch.stack([zero[0], zero[0] + 0.1]))  # mse 0 (floored at 1e-10), then 0.01
    assert table.shape == (1, 2) and table[0, 0] == pytest.approx(10 * np.log10(4e10))
    assert table[0, 1] == pytest.approx(10 * np.log10(400), abs=1e-4)
    assert flagged_count({"false_positives": 2, "false_positive_rate": 0.9, "honest_rounds": 8}) == 2
    assert flagged_count({"false_positive_rate": 0.25, "honest_rounds": 8}) == 2  # a result saved before the count
