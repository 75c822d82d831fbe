"""The SQLite run store: writes read back through export(); a dead writer reads as not-finished."""

import sqlite3
import subprocess
import sys
from pathlib import Path

from fl_sim.core.store import FINISHED, NOT_FINISHED, RUNNING, RunStore, list_runs

CONFIG = {"rounds": 2, "users": 2, "data": {"dataset": "folder:/x"}}


def filled_store(run_dir: Path) -> RunStore:
    run_dir.mkdir(parents=True)
    st = RunStore(run_dir / "store.sqlite")
    st.create_run(run_dir.name, CONFIG)
    st.add_user("bob", 1, "folder:/x", {"gender": "male", "age_band": None}, 4, 2)
    st.add_user("alice", 0, "folder:/x", {"gender": "female", "age_band": "<30"}, 4, 2, defenses={"dp": 1.0})
    st.set_node("alice", 17)
    st.add_round(2, 200.0, 2.5, 2, 0.4, 0.75, {"evaluate": {"acc_gender": 0.75}})
    st.add_round(1, 100.0, 3.0, 2, 0.9, 0.5, {"evaluate": {"acc_gender": 0.5}})
    st.add_update(rnd=1, user="alice", node_id=17, num_examples=4, local_steps=1, lr=0.05, loss=0.9,
                  protocol="fedsgd", update_norm=1.5, layer_norms={"conv1.weight": 1.0})
    return st


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_export_reads_back_what_was_written(tmp_path):
    # Prepare
    st = filled_store(tmp_path / "run-1")

    # Execute
    ex = st.export()
    st.close()

    # Assert
    assert ex["config"] == CONFIG
    assert ex["run"]["id"] == "run-1" and ex["run"]["status"] == RUNNING
    assert [(u["user"], u["partition_id"], u["node_id"]) for u in ex["users"]] == [("alice", 0, "17"), ("bob", 1, None)]
    assert ex["users"][0]["attributes"] == {"gender": "female", "age_band": "<30"}
    assert ex["users"][0]["defenses"] == {"dp": 1.0}
    assert [(r["round"], r["accuracy"]) for r in ex["rounds"]] == [(1, 0.5), (2, 0.75)]
    assert ex["rounds"][1]["metrics"] == {"evaluate": {"acc_gender": 0.75}}
    (up,) = ex["updates"]
    assert (up["round"], up["user"], up["protocol"], up["update_norm"]) == (1, "alice", "fedsgd", 1.5)
    assert up["layer_norms"] == {"conv1.weight": 1.0}
    assert ex["attacks"] == []


def test_finish_run_marks_finished(tmp_path):
    # Prepare
    st = filled_store(tmp_path / "run-1")

    # Execute
    st.finish_run(FINISHED, summary={"rounds": 2})
    run = st.export()["run"]
    st.close()

    # Assert
    assert run["status"] == FINISHED
    assert run["summary"] == {"rounds": 2}
    assert run["seconds"] >= 0


def test_dead_writer_reads_not_finished_and_is_listed(tmp_path):
    # Prepare
    runs = tmp_path / "runs"
    filled_store(runs / "run-1").close()
    with sqlite3.connect(runs / "run-1" / "store.sqlite") as db:
        db.execute("UPDATE run SET pid=?", (dead_pid(),))

    # Execute
    st = RunStore(runs / "run-1" / "store.sqlite", readonly=True)
    status = st.run()["status"]
    st.close()
    rows = list_runs(runs)

    # Assert
    assert status == NOT_FINISHED
    assert rows == [{"id": "run-1", "status": NOT_FINISHED, "created": rows[0]["created"], "rounds_done": 2,
                     "rounds": 2, "users": 2, "seconds": None, "accuracy": 0.75}]


def test_list_runs_newest_first_and_skips_non_runs(tmp_path):
    # Prepare
    runs = tmp_path / "runs"
    filled_store(runs / "20260101-000000-aaaa").close()
    filled_store(runs / "20260102-000000-bbbb").close()
    (runs / "not-a-run").mkdir()

    # Execute
    rows = list_runs(runs)

    # Assert
    assert [r["id"] for r in rows] == ["20260102-000000-bbbb", "20260101-000000-aaaa"]
    assert all(r["status"] == RUNNING for r in rows)  # this process wrote them and is alive


def test_list_runs_missing_dir(tmp_path):
    # Execute / Assert
    assert list_runs(tmp_path / "absent") == []
