"""The store's schema version: older stores migrate when a writer opens them, newer ones are refused in one line."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from fl_sim.core import schema as store_mod
from fl_sim.core.schema import SCHEMA, SCHEMA_VERSION
from fl_sim.core.store import RunStore, StoreError
from tests.conftest import FL_SIM


def _v1_store(path: Path) -> None:
    """A store as fl-sim wrote them before the version was kept: no ``updates.epsilon``, no indexes, version 0."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.replace(", epsilon REAL", ""))
    db.execute("INSERT INTO run (id, created, status, pid, config) VALUES ('r', 1.0, 'finished', 0, '{\"rounds\": 2}')")
    for rnd, user, metrics in ((1, "a", {"dp-epsilon": 0.5}), (1, "b", {}), (2, "a", {"dp-epsilon": 0.75, "x": 1})):
        db.execute("INSERT INTO updates (round, user, metrics, layer_norms, defenses) VALUES (?,?,?,'{}','{}')",
                   (rnd, user, json.dumps(metrics)))
    db.commit()
    db.close()


def _indexes(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
    finally:
        db.close()


def test_a_v1_store_reads_as_it_is_and_migrates_when_a_writer_opens_it(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    _v1_store(path)
    ro = RunStore(path, readonly=True)
    assert ro.version == 1 and ro.epsilons() == {(1, "a"): 0.5, (2, "a"): 0.75}  # read from the metrics JSON
    ro.close()
    assert _indexes(path) == set()  # reading migrates nothing
    rw = RunStore(path)
    assert rw.version == SCHEMA_VERSION
    rw.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("SELECT round, user, epsilon FROM updates ORDER BY id").fetchall() == [
        (1, "a", 0.5), (1, "b", None), (2, "a", 0.75)]
    db.close()
    assert {"updates_round", "updates_user", "attacks_round", "attacks_user", "attacks_status"} <= _indexes(path)
    again = RunStore(path, readonly=True)
    assert again.epsilons() == {(1, "a"): 0.5, (2, "a"): 0.75} and again.run()["config"] == {"rounds": 2}
    again.close()


def test_a_store_of_this_release_opens_after_a_schema_bump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store.sqlite"
    st = RunStore(path)
    st.create_run("r", {"rounds": 1})
    st.add_update(rnd=1, user="a", node_id=1, num_examples=4, local_steps=1, lr=0.1, loss=0.5, protocol="fedsgd",
                  update_norm=1.0, layer_norms={"w": 1.0}, metrics={"dp-epsilon": 2.0})
    st.finish_run("finished")
    st.close()
    # The next release: version + 1, with a migration that adds a column
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_mod.MIGRATIONS, SCHEMA_VERSION,
                        lambda db: db.execute("ALTER TABLE run ADD COLUMN note TEXT DEFAULT 'migrated'"))
    ro = RunStore(path, readonly=True)  # the older store reads before anything migrates it
    assert ro.version == SCHEMA_VERSION and ro.run()["status"] == "finished"
    ro.close()
    rw = RunStore(path)
    assert rw.version == SCHEMA_VERSION + 1
    run = rw.run()
    assert run["note"] == "migrated" and run["status"] == "finished" and rw.epsilons() == {(1, "a"): 2.0}
    rw.close()


def test_a_store_from_a_newer_fl_sim_is_one_line_and_exit_2(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "future").mkdir(parents=True)
    path = runs / "future" / "store.sqlite"
    st = RunStore(path)
    st.create_run("future", {"rounds": 1})
    st.close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    db.commit()
    db.close()
    for readonly in (True, False):
        with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 7}"):
            RunStore(path, readonly=readonly)
    r = subprocess.run([str(FL_SIM), "inspect", "future", "--runs-dir", str(runs)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "newer fl-sim" in r.stderr and str(path) in r.stderr
    listed = subprocess.run([str(FL_SIM), "runs", "--runs-dir", str(runs), "--json"], capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0 and "newer fl-sim" in json.loads(listed.stdout)[0]["status"]


def test_finishing_a_run_folds_the_wal_into_the_store(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    st = RunStore(path)
    st.create_run("r", {})
    for i in range(200):
        st.add_update(rnd=1, user=f"u{i}", node_id=i, num_examples=4, local_steps=1, lr=0.1, loss=0.5,
                      protocol="fedsgd", update_norm=1.0, layer_norms={"w": 1.0} | {f"l{k}": 1.0 for k in range(50)})
    wal = path.with_name("store.sqlite-wal")
    assert wal.stat().st_size > 0
    st.finish_run("finished")
    assert wal.stat().st_size == 0  # truncated: what was in it is in the database file
    st.close()
    assert len(RunStore(path, readonly=True).updates()) == 200
