"""`fl-sim run --resume`: a run killed with SIGKILL goes on to the same final model, ε and attacks as one never killed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import torch

from fl_sim.core.config import load_config
from fl_sim.core.store import RunStore
from fl_sim.federation import run_federation
from tests.conftest import FL_SIM, make_face_folder

TINY = ["data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2", "model.width=4"]
# 4 rounds, 3 of 4 users a round; DP-SGD for half of them; every round attacked. One attack job in flight at a time
# (queue 1, wait), and jobs long enough that the server's rounds wait on them: the kill lands mid-run, with the
# attacks of a finished round still unfinished.
SETS = ["users=4", "rounds=4", "clients_per_round=3", "defenses.dp_sgd.noise_multiplier=1",
        "defenses.dp_sgd.users=half", "attack.enabled=true", "attack.every=1", "attack.methods=dlg",
        "attack.iterations=60", "attack.queue_size=1", "attack.when_full=wait", *TINY]


def _rounds(db: Path) -> int:
    try:
        c = sqlite3.connect(db, timeout=1)
        try:
            return int(c.execute("SELECT COUNT(*) FROM rounds").fetchone()[0])
        finally:
            c.close()
    except sqlite3.Error:
        return 0


def _record(run_dir: Path) -> tuple[dict[tuple[int, str], float], list[tuple[int, str | None, str, str]], list]:
    st = RunStore(run_dir / "store.sqlite", readonly=True)
    try:
        eps = st.epsilons()
        attacks = sorted((a["round"], a["user"], a["method"], a["status"]) for a in st.attacks())
        rounds = [(r["round"], r["n_clients"], r["accuracy"], r["train_loss"]) for r in st.rounds()]
        assert st.run()["status"] == "finished"
    finally:
        st.close()
    return eps, attacks, rounds


def test_a_run_killed_after_round_2_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    data = make_face_folder(tmp_path / "faces", users=4, photos=6)
    sets = [f"data.dataset=folder:{data}", *SETS]
    # The uninterrupted run
    whole = run_federation(load_config(None, sets), tmp_path / "whole")
    assert whole.status == "finished", whole.error
    # The same run, SIGKILLed (driver and every process of its group) once round 2 is recorded
    runs = tmp_path / "killed"
    proc = subprocess.Popen([str(FL_SIM), "run", "--runs-dir", str(runs), *[a for s in sets for a in ("--set", s)]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        dbs = list(runs.glob("*/store.sqlite"))
        if dbs and _rounds(dbs[0]) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = next(runs.glob("*/store.sqlite")).parent
    st = RunStore(run_dir / "store.sqlite", readonly=True)
    done, status = len(st.rounds()), st.run()["status"]
    pending = [a for a in st.attacks() if a["status"] == "unfinished"]
    st.close()
    assert status == "not-finished" and 2 <= done < 4, (status, done)
    assert pending, "the kill left no attack unfinished: the re-queue is not exercised"
    # The killed run reads without error: its finished rounds are there, and it says it did not finish
    listed = subprocess.run([str(FL_SIM), "runs", "--runs-dir", str(runs), "--json"], capture_output=True, text=True)
    exported = subprocess.run([str(FL_SIM), "export", run_dir.name, "--runs-dir", str(runs), "--json"],
                              capture_output=True, text=True)
    assert listed.returncode == 0 and exported.returncode == 0, listed.stderr + exported.stderr
    assert json.loads(listed.stdout)[0]["status"] == "not-finished"
    assert json.loads(exported.stdout)["run"]["status"] == "not-finished"
    # Resume it
    r = subprocess.run([str(FL_SIM), "run", "--resume", run_dir.name, "--runs-dir", str(runs)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # Bit-identical final model; the same epsilon per user and round; every attack there and finished
    a, b = torch.load(whole.run_dir / "final_model.pt"), torch.load(run_dir / "final_model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    eps_a, attacks_a, rounds_a = _record(whole.run_dir)
    eps_b, attacks_b, rounds_b = _record(run_dir)
    assert eps_a == eps_b and len(eps_a) > 0
    assert attacks_a == attacks_b and all(s == "finished" for *_, s in attacks_b)
    assert rounds_a == rounds_b
    assert not list((run_dir / "attack_jobs").glob("*.pkl"))  # every job's results are stored


def test_resume_refuses_in_one_line(tmp_path: Path) -> None:
    from fl_sim.core.config import to_dict, to_toml

    # A finished run's folder, as a run leaves it (no federation needed to refuse resuming it)
    data = make_face_folder(tmp_path / "faces", users=2, photos=6)
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=2", "rounds=1", *TINY])
    runs = tmp_path / "runs"
    (runs / "done-run").mkdir(parents=True)
    (runs / "done-run" / "config.toml").write_text(to_toml(cfg) + "\n")
    st = RunStore(runs / "done-run" / "store.sqlite")
    st.create_run("done-run", to_dict(cfg))
    st.finish_run("finished")
    st.close()
    for args, needle in ((["done-run"], "finished"), (["nope"], "no run"),
                         (["done-run", "--set", "rounds=3"], "own config")):
        r = subprocess.run([str(FL_SIM), "run", "--runs-dir", str(runs), "--resume", *args], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
