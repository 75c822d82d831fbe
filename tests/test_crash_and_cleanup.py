"""After a crash the store tells the truth, and no process a run started outlives it; Ray on the loopback."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path


from fl_sim.core.config import load_config
from fl_sim.federation import run_federation
from fl_sim.core.processes import descendants
from tests.conftest import FL_SIM, make_face_folder

TINY = ["users=2", "rounds=1", "data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2",
        "model.width=4", "attack.methods=dlg", "attack.every=1"]


def _args(runs: Path, data: Path, extra: list[str]) -> list[str]:
    return [str(FL_SIM), "run", "--runs-dir", str(runs), "--set", f"data.dataset=folder:{data}",
            *[a for s in [*TINY, *extra] for a in ("--set", s)]]


def _alive(procs: dict[int, int]) -> dict[int, int]:
    from fl_sim.core.processes import same_process
    return {p: t for p, t in procs.items() if same_process(p, t)}


def _watch(proc: subprocess.Popen[bytes], runs: Path, until: str, timeout: float = 60) -> dict[int, int]:
    """The driver's process tree, collected until ``until`` holds in the store ('attack-running' | 'round')."""
    seen: dict[int, int] = {}
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        seen.update(descendants(proc.pid))
        for db in runs.glob("*/store.sqlite"):
            try:
                c = sqlite3.connect(db, timeout=1)
                n = (c.execute("SELECT COUNT(*) FROM attacks WHERE status='running'") if until == "attack-running"
                     else c.execute("SELECT COUNT(*) FROM rounds")).fetchone()[0]
                c.close()
            except sqlite3.Error:
                n = 0
            if n:
                time.sleep(0.5)
                seen.update(descendants(proc.pid))
                return seen
        time.sleep(0.3)
    raise AssertionError(f"the run never reached {until!r}")


def test_sigkill_mid_drain_reads_unfinished_and_next_command_reaps(tmp_path: Path) -> None:
    data = make_face_folder(tmp_path / "faces", users=2, photos=6)
    runs = tmp_path / "runs"
    proc = subprocess.Popen(_args(runs, data, ["attack.iterations=1000000"]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        seen = _watch(proc, runs, "attack-running")
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: Ray's processes are orphaned
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    run_id = next(runs.glob("*/store.sqlite")).parent.name
    res = subprocess.run([str(FL_SIM), "inspect", run_id, "--runs-dir", str(runs), "--json"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    statuses = {a["status"] for a in json.loads(res.stdout)["attacks"]}
    assert statuses and not statuses & {"running", "queued"} and "unfinished" in statuses, statuses
    # The next fl-sim command stops the orphans it can prove are the dead run's (recorded pid + start time)
    listed = subprocess.run([str(FL_SIM), "runs", "--runs-dir", str(runs), "--json"], capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["status"] == "not-finished", listed.stderr
    time.sleep(1)
    assert not _alive(seen), {p: open(f"/proc/{p}/cmdline").read()[:60] for p in _alive(seen)}


def _signalled_run(tmp_path: Path, sig: int) -> None:
    data = make_face_folder(tmp_path / "faces", users=2, photos=6)
    runs = tmp_path / "runs"
    proc = subprocess.Popen(_args(runs, data, ["rounds=50", "attack.enabled=false"]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        seen = _watch(proc, runs, "round")
        assert seen, "no process was started"
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)  # the unwind watchdog ends it within UNWIND_GRACE_S (20 s) + the processes' grace
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    time.sleep(0.5)
    assert not _alive(seen), {p: open(f"/proc/{p}/cmdline").read()[:60] for p in _alive(seen)}
    st = sqlite3.connect(next(runs.glob("*/store.sqlite")))
    assert st.execute("SELECT status FROM run").fetchone()[0] == "failed"


def test_sigint_leaves_no_process(tmp_path: Path) -> None:
    _signalled_run(tmp_path, signal.SIGINT)


def test_sigterm_leaves_no_process(tmp_path: Path) -> None:
    _signalled_run(tmp_path, signal.SIGTERM)


def test_normal_and_failed_runs_leave_no_process_and_listen_on_loopback_only(tmp_path: Path) -> None:
    import threading

    data = make_face_folder(tmp_path / "faces", users=2, photos=6)
    seen: dict[int, int] = {}
    sockets: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.3):
            kids = descendants(os.getpid())
            seen.update(kids)
            if kids and len(sockets) < 3:
                out = subprocess.run(["ss", "-ltnupH"], capture_output=True, text=True).stdout
                sockets.extend(ln for ln in out.splitlines()
                               if any(f"pid={p}," in ln for p in [os.getpid(), *kids]))

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        ok = run_federation(load_config(None, [f"data.dataset=folder:{data}", *TINY, "attack.iterations=3"]),
                            tmp_path / "runs")

        def boom(strategy: object) -> object:
            raise RuntimeError("deliberate failure")

        bad = run_federation(load_config(None, [f"data.dataset=folder:{data}", *TINY, "attack.enabled=false"]),
                             tmp_path / "runs", wrap=boom)
    finally:
        stop.set()
        th.join()
    assert ok.status == "finished", ok.error
    assert bad.status == "failed" and "deliberate failure" in (bad.error or "")
    assert seen and not _alive(seen), {p: open(f"/proc/{p}/cmdline").read()[:60] for p in _alive(seen)}
    assert sockets, "no listening socket of the run was seen"
    for ln in sockets:
        local = ln.split()[4]
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")), ln
