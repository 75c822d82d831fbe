"""The processes a run starts (Ray's GCS, raylet, agents, workers): recorded as they appear, stopped by
their own process ids when the run ends, and reaped by the next fl-sim command if the driver was killed.

A process is "the run's" when it descends from the driver while the run goes, through processes that all
started after the run did: whatever the driver's process already had running when the run began (a Ray
cluster a test or a notebook started, and the workers that cluster starts later) is not the run's. A run
attached to a cluster (``simulation.ray_address``) starts no Ray process of its own: the cluster's raylet
starts its workers, and only ``ray.shutdown()`` ends its connection. A process is identified by its pid
*and* its start time (``/proc/<pid>/stat``), so a pid reused later by another process is never touched.
Nothing here kills by name.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

PROC_FILE = "processes.json"


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks since boot) of a live process, else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        fields = s[s.rfind(")") + 2:].split()
        if fields[0] == "Z":  # a zombie has already exited
            return None
        return int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return ""


def descendants(root: int, skip: dict[int, int] | None = None) -> dict[int, int]:
    """Every live descendant of ``root``: pid -> start ticks (one pass over /proc); the processes in ``skip``
    (pid -> start ticks: the same processes, not reused pids) and everything below them are left out."""
    children: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append((int(name), st[1]))
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, ticks in children.get(todo.pop(), []):
            if pid not in out and (skip is None or skip.get(pid) != ticks):
                out[pid] = ticks
                todo.append(pid)
    return out


def same_process(pid: int, ticks: int) -> bool:
    """``pid`` is alive and is still the process that started at ``ticks``."""
    st = _stat(pid)
    return st is not None and st[1] == ticks


def stop_processes(procs: dict[int, int], grace: float = 3.0) -> list[int]:
    """SIGTERM each still-identical process, SIGKILL what is left after ``grace`` s (Ray's agents
    ignore SIGTERM); returns the pids that had to be killed."""
    live = {p: t for p, t in procs.items() if p != os.getpid() and same_process(p, t)}
    for pid in live:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + grace
    while live and time.time() < deadline:
        time.sleep(0.1)
        live = {p: t for p, t in live.items() if same_process(p, t)}
    for pid, ticks in live.items():
        if same_process(pid, ticks):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    t_end = time.time() + 2.0
    while time.time() < t_end and any(same_process(p, t) for p, t in live.items()):
        time.sleep(0.05)
    return sorted(live)


class ProcessGuard:
    """While a run goes: records every process the driver starts (to ``run_dir/processes.json``, for
    the case the driver itself is SIGKILLed); ``stop()`` ends whatever of them still runs."""

    def __init__(self, run_dir: Path, interval: float = 0.5) -> None:
        self.path = run_dir / PROC_FILE
        self.interval = interval
        me = _stat(os.getpid())
        self.driver = (os.getpid(), me[1] if me else 0)
        self.seen: dict[int, int] = {}
        self.cmds: dict[int, str] = {}
        # Already running when the run began: not the run's, nor anything they start later.
        self.before = descendants(os.getpid())
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="fl-sim-process-guard", daemon=True)

    def start(self) -> ProcessGuard:
        self._thread.start()
        return self

    def scan(self) -> None:
        with self._lock:
            new = {p: t for p, t in descendants(os.getpid(), self.before).items() if self.seen.get(p) != t}
            if not new:
                return
            self.seen.update(new)
            self.cmds.update({p: _cmd(p) for p in new})
            doc: dict[str, Any] = {"driver": {"pid": self.driver[0], "start_ticks": self.driver[1]},
                                   "processes": [{"pid": p, "start_ticks": t, "cmd": self.cmds.get(p, "")}
                                                 for p, t in sorted(self.seen.items())]}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            tmp.replace(self.path)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except OSError:
                pass

    def stop(self) -> list[int]:
        """Stop recording; end every recorded process still alive (after Ray's own shutdown had its
        chance); the record is removed once nothing of it runs."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.scan()
        except OSError:
            pass
        killed = stop_processes(dict(self.seen))
        if not any(same_process(p, t) for p, t in self.seen.items()):
            self.path.unlink(missing_ok=True)
        return killed


def reap_orphans(runs_dir: Path) -> list[int]:
    """Processes recorded by runs whose driver is gone (SIGKILLed) and that still run — the same pid
    with the same start time, so provably that run's — are stopped; returns their pids."""
    killed: list[int] = []
    if not runs_dir.is_dir():
        return killed
    for rec in runs_dir.glob(f"*/{PROC_FILE}"):
        try:
            doc = json.loads(rec.read_text())
            driver = doc["driver"]
            procs = {int(p["pid"]): int(p["start_ticks"]) for p in doc["processes"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if same_process(int(driver["pid"]), int(driver["start_ticks"])):
            continue  # its run is still going
        killed += stop_processes(procs, grace=1.0)
        if not any(same_process(p, t) for p, t in procs.items()):
            rec.unlink(missing_ok=True)
    return killed
