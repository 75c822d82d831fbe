"""`fl-sim deploy`: the fl-sim app through Flower's own `flwr run`, against processes started (and stopped) here.

``local``: Flower's Deployment Engine — a SuperLink, one SuperNode per user (its user given in node config:
``partition-id``, ``num-partitions``) and, when attacks are on, a Ray head carrying the attack worker's
resource, which the ServerApp reaches by address (``attack.ray_address``). ``sim``: a SuperLink in simulation
mode, i.e. Flower's Simulation Engine behind `flwr run`. Every process binds 127.0.0.1.

The run folder is made here first (pre-flight checks, store, config snapshot) and handed to the app as
``run-dir``, so the ServerApp and every ClientApp read the same config. Rounds are read from the store as
they land; the command's status is the run's (Flower's `flwr run` exits 0 whatever the run did). Every
process started here is recorded and stopped by its pid at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fl_sim.core.config import RunConfig
from fl_sim.core.errors import FlSimError
from fl_sim.core.store import FAILED, FINISHED, RUNNING, RunStore
from fl_sim.federation import RunResult, unwind_on_signals, init_run, reap_orphans
from fl_sim.core.processes import ProcessGuard

MODES = ("local", "sim")
ATTACK_RESOURCE = "attack_worker"  # the Ray resource the local head carries and the worker asks for
START_TIMEOUT_S = 60.0  # for a SuperLink or a Ray head to listen
END_GRACE_S = 30.0  # after `flwr run` returns, for the ServerApp's last store write


def project_dir() -> Path:
    """The fl-sim project folder `flwr run` builds the app from (pyproject.toml with ``[tool.flwr.app]``)."""
    here = Path(__file__).resolve().parents[2]
    py = here / "pyproject.toml"
    if py.is_file() and "[tool.flwr.app]" in py.read_text():
        return here
    raise FlSimError(f"fl-sim deploy: no Flower app at {here} (pyproject.toml with [tool.flwr.app]); "
                     "run it from an fl-sim checkout or its Docker image")


def free_port() -> int:
    """A TCP port free on the loopback now (the OS picks; tests and runs in parallel never collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _bin(name: str) -> str:
    """A console script of this Python's environment (flwr, flower-superlink, ray), wherever PATH points."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    fh: IO[bytes]


@dataclass
class Deployment:
    """The processes of one deployment, started in order and stopped in reverse."""

    cfg: RunConfig
    run_dir: Path
    mode: str
    say: Callable[[str], None] = print
    procs: list[_Proc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    link_port: int = 0
    ray_port: int = 0
    ray_temp: Path | None = None

    def __post_init__(self) -> None:
        self.run_dir = self.run_dir.resolve()  # the processes run elsewhere (cwd, the ServerApp's own)
        self.logs = self.run_dir / "deploy"
        self.logs.mkdir(exist_ok=True)
        self.env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                    # Ray binds the loopback only (see fl_sim.core.loopback).
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
                    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONUNBUFFERED": "1",
                    # Flower starts its SuperExec, ServerApp and ClientApp processes by name.
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        self.env.pop("RAY_ADDRESS", None)

    # -- processes -------------------------------------------------------------------------
    def _start(self, name: str, argv: list[str], home: str | None = None) -> _Proc:
        log = self.logs / f"{name}.log"
        fh = open(log, "ab")
        env = dict(self.env)
        if home is not None:  # each Flower process installs the app bundle in its own home: no shared writes
            env["FLWR_HOME"] = str(self.run_dir / "flwr_home" / home)
            Path(env["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
        popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 cwd=self.run_dir)
        proc = _Proc(name, popen, log, fh)
        self.procs.append(proc)
        return proc

    def _wait_listening(self, proc: _Proc, port: int) -> None:
        deadline = time.time() + START_TIMEOUT_S
        while not _listening(port):
            if proc.popen.poll() is not None:
                raise FlSimError(f"fl-sim deploy: {proc.name} exited with code {proc.popen.returncode} before "
                                 f"listening on 127.0.0.1:{port} ({_last_line(proc.log)}; log {proc.log})")
            if time.time() > deadline:
                raise FlSimError(f"fl-sim deploy: {proc.name} not listening on 127.0.0.1:{port} after "
                                 f"{START_TIMEOUT_S:.0f}s (log {proc.log})")
            time.sleep(0.2)

    def start(self) -> None:
        """SuperLink, then (local) the Ray head for the attack worker and one SuperNode per user."""
        self.link_port = free_port()
        link = [_bin("flower-superlink"), "--insecure", "--isolation", "subprocess", "--host", "127.0.0.1",
                "--port", str(self.link_port), "--database", str(self.logs / "superlink.db")]
        if self.mode == "sim":
            link.append("--simulation")
        self._wait_listening(self._start("superlink", link, home="superlink"), self.link_port)
        if self.mode != "local":
            return
        if self.ray_port:
            self._start_ray_head()
        n = self.cfg.users
        for i in range(n):
            self._start(f"supernode-{i}", [
                _bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.link_port}",
                "--host", "127.0.0.1", "--port", str(free_port()),
                "--node-config", f"partition-id={i} num-partitions={n}"], home=f"supernode-{i}")

    def _start_ray_head(self) -> None:
        """A one-node Ray cluster carrying ``attack_worker``; ``--block`` keeps its processes this one's children."""
        tmp = self.ray_temp = Path(os.environ.get("TMPDIR", "/tmp")) / f"flsim-ray-{os.getpid()}-{self.ray_port}"  # short: socket paths
        resources = json.dumps({ATTACK_RESOURCE: 1})
        head = self._start("ray-head", [
            _bin("ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(self.ray_port),
            "--num-cpus", "1", "--num-gpus", str(int(self.cfg.attack.worker_gpus > 0)), "--resources", resources,
            "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(tmp),
            "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())])
        self._wait_listening(head, self.ray_port)

    def submit(self) -> _Proc:
        """`flwr run <project> fl-sim --stream` against the SuperLink, with the run folder as ``run-dir``."""
        home = self.run_dir / "flwr_home" / "cli"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text('[superlink]\ndefault = "fl-sim"\n\n[superlink.fl-sim]\n'
                                          f'address = "127.0.0.1:{self.link_port}"\ninsecure = true\n')
        run_cfg = self.logs / "run-config.toml"
        run_cfg.write_text(f"run-dir = {json.dumps(str(self.run_dir))}\nnum-server-rounds = {self.cfg.rounds}\n")
        argv = [_bin("flwr"), "run", str(project_dir()), "fl-sim", "--stream", "--run-config", str(run_cfg)]
        if self.mode == "sim":
            sim = self.cfg.simulation  # Flower's simulation config takes whole CPUs per client
            fed = [f"num-supernodes={self.cfg.users}", f"client-resources-num-cpus={max(1, round(sim.client_cpus))}",
                   f"client-resources-num-gpus={float(sim.client_gpus)}"]
            if sim.ray_num_cpus:
                fed.append(f"init-args-num-cpus={sim.ray_num_cpus}")
            argv += ["--federation-config", " ".join(fed)]
        return self._start("flwr-run", argv, home="cli")

    def alive(self, name: str) -> bool:
        return any(p.name == name and p.popen.poll() is None for p in self.procs)

    def stop(self) -> None:
        """SIGTERM every started process (newest first) and wait a little; the guard kills what stays."""
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                try:
                    p.popen.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.time() + 10
        for p in reversed(self.procs):
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(timeout=5)
            p.fh.close()
        if self.ray_temp is not None:  # the head's sockets and logs (its session logs are not kept)
            shutil.rmtree(self.ray_temp, ignore_errors=True)


def _last_line(log: Path) -> str:
    """The last error-looking line of a process log (or its last line), for a one-line failure."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln or "error:" in ln]
    pick = (errors or lines or ["empty log"])[-1]
    return pick.replace("\x1b[91m", "").replace("\x1b[0m", "")[:300]


def _round_record(row: dict[str, Any]) -> dict[str, Any]:
    """A stored round as the progress callback's record (``fl_sim.experiments.runner.progress_line``)."""
    m = row.get("metrics") or {}
    return {"n_clients": row["n_clients"], "seconds": row["seconds"] or 0.0, "train": m.get("train", {}),
            "evaluate": m.get("evaluate", {}), "per_user_accuracy": m.get("per_user_accuracy", {}),
            "failed": m.get("failed", {})}


def deploy(cfg: RunConfig, runs_dir: Path, progress: Callable[[int, dict[str, Any]], None] | None = None,
           mode: str = "local", say: Callable[[str], None] = print) -> RunResult:
    """One run on a deployment started here; the run folder is completed or marked failed, and no process
    started here outlives the call."""
    if mode not in MODES:
        raise FlSimError(f"fl-sim deploy: mode {mode!r} is not one of {', '.join(MODES)}")
    project_dir()  # before any folder exists
    ray_port = 0
    if mode == "local" and cfg.attack.enabled:
        # The worker lives on the Ray head started below, placed there by its resource; the snapshot says so.
        ray_port = free_port()
        cfg.attack.ray_address = f"127.0.0.1:{ray_port}"
        cfg.attack.worker_resource = ATTACK_RESOURCE
    _, run_id, run_dir = init_run(cfg, runs_dir)
    reap_orphans(runs_dir)
    t0 = time.time()
    guard = ProcessGuard(run_dir).start()
    old = unwind_on_signals(guard, run_dir)
    dep = Deployment(cfg, run_dir, mode, say, ray_port=ray_port)
    try:
        dep.start()
        say(f"deploy {mode}: SuperLink 127.0.0.1:{dep.link_port}"
            + (f", {cfg.users} SuperNodes" if mode == "local" else f", simulation of {cfg.users} nodes")
            + (f", attack worker on Ray 127.0.0.1:{dep.ray_port}" if dep.ray_port else "")
            + f"; logs in {dep.logs}")
        run = dep.submit()
        _follow(dep, run, cfg, progress)
        status, error = _final_status(dep, run)
        return RunResult(run_id, run_dir, status, time.time() - t0, error)
    except BaseException as exc:
        st = RunStore(run_dir / "store.sqlite")
        if st.status() in (RUNNING, None):
            st.finish_run(FAILED, error=str(exc) or type(exc).__name__)
        st.close()
        raise
    finally:
        dep.stop()
        guard.stop()
        if old is not None:
            signal.signal(signal.SIGTERM, old[0])
            signal.signal(signal.SIGINT, old[1])


def _follow(dep: Deployment, run: _Proc, cfg: RunConfig,
            progress: Callable[[int, dict[str, Any]], None] | None) -> None:
    """Until `flwr run` returns: report each round as the store gets it; a dead SuperLink ends the run."""
    seen = 0
    draining = False
    store = RunStore(dep.run_dir / "store.sqlite", readonly=True)
    try:
        while True:
            ended = run.popen.poll() is not None
            rows = store.rounds()
            for row in rows[seen:]:
                if progress:
                    progress(int(row["round"]), _round_record(row))
            seen = len(rows)
            if seen >= cfg.rounds and cfg.attack.enabled and not draining:
                draining = True
                pending = sum(1 for a in store.attacks() if a["status"] in ("queued", "running"))
                if progress and pending:
                    progress(-1, {"draining": pending})
            if ended:
                return
            if not dep.alive("superlink"):
                raise FlSimError(f"fl-sim deploy: the SuperLink stopped ({_last_line(dep.logs / 'superlink.log')})")
            time.sleep(0.5)
    finally:
        store.close()


def _final_status(dep: Deployment, run: _Proc) -> tuple[str, str | None]:
    """The run's status as the ServerApp recorded it; a run still 'running' once `flwr run` returned and the
    grace passed is failed here, with the last error line of the logs."""
    deadline = time.time() + END_GRACE_S
    while True:
        st = RunStore(dep.run_dir / "store.sqlite")
        status, row = st.status(), st.run()
        if status != RUNNING or time.time() > deadline:
            if status == RUNNING:
                why = _last_line(run.log)
                if run.popen.returncode:
                    why = f"flwr run exited with code {run.popen.returncode}: {why}"
                st.finish_run(FAILED, error=f"the ServerApp did not finish the run ({why}; logs in {dep.logs})")
                status, row = FAILED, st.run()
            st.close()
            return (FINISHED if status == FINISHED else FAILED), row.get("error")
        st.close()
        time.sleep(0.5)
