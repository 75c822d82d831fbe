"""`fl-sim sweep`: one federation per grid value, a table, JSON rows and a plot; bad grids fail first."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fl_sim.core.errors import ConfigError
from fl_sim.experiments.sweep import parse_grid
from tests.conftest import FL_SIM, make_face_folder

TINY = ["data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2", "model.width=4"]


def test_sweep_runs_each_value_and_writes_rows_table_and_plot(tmp_path: Path) -> None:
    data = make_face_folder(tmp_path / "faces", users=2, photos=6)
    runs = tmp_path / "runs"
    sets = [a for s in [f"data.dataset=folder:{data}", "users=2", "rounds=1", *TINY, "attack.methods=ig",
                        "attack.iterations=3"] for a in ("--set", s)]
    res = subprocess.run([str(FL_SIM), "sweep", *sets, "--grid", "defenses.dp_sgd.noise_multiplier=0,4",
                          "--runs-dir", str(runs), "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    rows = {r["value"]: r for r in doc["rows"]}
    assert set(rows) == {0, 4} and all(r["param"] == "defenses.dp_sgd.noise_multiplier" for r in rows.values())
    assert rows[0]["epsilon"] is None and rows[4]["epsilon"] > 0  # z = 0: clipping only, no guarantee
    for r in rows.values():
        assert r["status"] == "finished" and 0 <= r["accuracy"] <= 1
        assert r["identity_gain"] is not None and r["face_similarity"] is not None and r["reid_top1"] in (0.0, 0.5, 1.0)
        assert all(r[f"{ev}_reid_top1_ci"] is not None for ev in ("sface", "dlib"))
        assert r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1]
    assert Path(doc["plot"]).stat().st_size > 10_000 and "| 4 |" in Path(doc["table"]).read_text()


@pytest.mark.parametrize("bad", ["noequals", "key=", "=1,2"])
def test_parse_grid_rejects_malformed(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_grid([bad])


def test_bad_grid_value_fails_before_any_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    res = subprocess.run([str(FL_SIM), "sweep", "--grid", "defenses.dp_sgd.noise_multiplier=1,-2",
                          "--runs-dir", str(runs)], capture_output=True, text=True)
    assert res.returncode == 2 and "noise_multiplier" in res.stderr and "Traceback" not in res.stderr
    assert not runs.exists()
