"""No silent nothing: unlabelled data picks a task that trains (or is refused), empty updates are never 'finished'."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fl_sim.core.config import load_config
from fl_sim.federation import prepare_users, run_federation
from fl_sim.core.store import RunStore
from tests.conftest import FL_SIM, make_face_folder

TINY = ["data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2", "model.width=4"]


def test_auto_task_on_unlabelled_folder_trains_identity_above_chance(tmp_path: Path) -> None:
    data = make_face_folder(tmp_path / "faces", users=4, photos=6, attributes=False)
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=4", "rounds=6", *TINY, "attack.enabled=false",
                             "lr=0.05"])
    assert cfg.task == "auto"
    prepare_users(cfg)
    assert cfg.task == "identity"  # no labels: each user is a class, which always has a label
    res = run_federation(cfg, tmp_path / "runs")
    assert res.status == "finished", res.error
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    rounds, updates, run = st.rounds(), st.updates(), st.run()
    st.close()
    assert run["config"]["task"] == "identity"  # the snapshot says what ran
    assert all(u["loss"] > 0 and u["update_norm"] > 0 for u in updates)
    assert rounds[-1]["accuracy"] > 1 / 4  # above chance among 4 users by round 6


def test_attributes_task_without_any_label_is_refused_before_work(tmp_path: Path) -> None:
    data = make_face_folder(tmp_path / "faces", users=3, photos=6, attributes=False)
    runs = tmp_path / "runs"
    res = subprocess.run([str(FL_SIM), "run", "--runs-dir", str(runs), "--set", f"data.dataset=folder:{data}",
                          "--set", "users=3", "--set", "task=attributes", *(a for t in TINY for a in ("--set", t))],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "task" in line and "attributes.csv" in line and "task=identity" in line
    assert not runs.exists()


def test_an_update_with_no_labelled_example_is_recorded_and_its_attack_is_no_signal(tmp_path: Path) -> None:
    data = make_face_folder(tmp_path / "faces", users=3, photos=6)
    # user01 loses its labels: under the attributes task its update is exactly zero.
    (data / "attributes.csv").write_text("user,gender,age\nuser00,female,20\nuser01,,\nuser02,male,50\n")
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=3", "rounds=2", *TINY, "task=attributes",
                             "attack.enabled=true", "attack.methods=ig", "attack.iterations=2", "attack.every=1"])
    res = run_federation(cfg, tmp_path / "runs")
    assert res.status == "finished", res.error
    exported = json.loads(subprocess.run([str(FL_SIM), "export", res.run_id, "--runs-dir", str(tmp_path / "runs")],
                                         capture_output=True, text=True, check=True).stdout)
    silent = [u for u in exported["updates"] if u["user"] == "user01"]
    assert silent and all(u["update_norm"] == 0 and u["metrics"]["labelled-examples"] == 0 for u in silent)
    by_user = {}
    for a in exported["attacks"]:
        by_user.setdefault(a["user"], set()).add(a["status"])
    assert by_user["user01"] == {"no-signal"} and by_user["user00"] == by_user["user02"] == {"finished"}
    zero = [a for a in exported["attacks"] if a["user"] == "user01"]
    assert all("no signal" in a["error"] and not a["metrics"] for a in zero)
    # Unknown truths stay null in the export; known ones are scored.
    assert all(a.get("gender_correct") is None for a in zero)
    assert all(a["gender_correct"] in (0, 1) for a in exported["attacks"] if a["user"] == "user00")
