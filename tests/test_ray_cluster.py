"""Runs on an existing Ray cluster: two nodes on this machine, the attack worker placed by a custom resource,
the cluster left running after the run, and a worker killed mid-job in a whole run.

The cluster is this module's own: ``ray start --block`` in a session of its own with a private ``--temp-dir``,
stopped afterwards by the pids of what it started (never ``ray stop``: other runs' Ray on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fl_sim.core.config import load_config
from fl_sim.core.errors import ConfigError
from fl_sim.core.store import RunStore
from fl_sim.federation import run_federation
from fl_sim.federation.deploy import free_port
from fl_sim.core.processes import _stat, descendants, same_process, stop_processes
from tests.conftest import REPO, make_face_folder
from tests.loopback import listening_hosts, on_loopback

LOOPBACK_RAY = REPO / "tests" / "loopback.py"
TINY = ["data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2", "model.width=4"]


@dataclass
class Cluster:
    address: str
    temp_dir: str
    starts: list[subprocess.Popen[bytes]]

    def processes(self) -> dict[int, int]:
        """Every process of the cluster: the two ``ray start`` and what they started (pid -> start ticks)."""
        procs: dict[int, int] = {}
        for p in self.starts:
            procs.update(descendants(p.pid))
            if (st := _stat(p.pid)) is not None:
                procs[p.pid] = st[1]
        return procs

    def attack_node(self) -> str:
        """The id of the node that carries ``attack_worker``, asked from the cluster itself."""
        import ray

        ray.init(address=self.address, logging_level="error", log_to_driver=False)
        try:
            return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "attack_worker" in n["Resources"])
        finally:
            ray.shutdown()


def _ray_start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    # A node that joins needs Ray's cluster mode, which a simulation in this process may have turned off; the
    # launcher keeps the node address 127.0.0.1 as given (tests/loopback.py), so every node listens there only.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    proc = subprocess.Popen([sys.executable, str(LOOPBACK_RAY), "start", "--block", "--disable-usage-stats", *args],
                            env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"ray start failed: {log.read_text(errors='replace')[-500:]}")
        time.sleep(0.2)
    return proc


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # A short private temp dir: Ray's socket paths must stay under 107 characters.
    tmp = tempfile.mkdtemp(prefix="flr", dir="/tmp")
    port = free_port()
    c = Cluster(f"127.0.0.1:{port}", tmp, [])
    try:
        c.starts.append(_ray_start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
                                    "--include-dashboard", "false", "--temp-dir", tmp], Path(tmp) / "head.log"))
        # The attack node: no CPUs for Flower's client actors, one custom resource for the worker.
        c.starts.append(_ray_start(["--address", c.address, "--node-ip-address", "127.0.0.1", "--num-cpus", "0",
                                    "--resources", json.dumps({"attack_worker": 1}), "--temp-dir", tmp],
                                   Path(tmp) / "node.log"))
        hosts = listening_hosts(set(c.processes()))
        assert hosts and all(on_loopback(h) for h in hosts), f"the test cluster listens beyond the loopback: {hosts}"
        yield c
    finally:
        procs = c.processes()
        stop_processes(procs)
        for p in c.starts:
            p.wait(timeout=10)
        assert not [p for p, t in procs.items() if same_process(p, t)]
        assert not _processes_mentioning(tmp), "a process of the test cluster outlived it"
        shutil.rmtree(tmp, ignore_errors=True)


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line names ``text`` (read only: nothing is killed by name)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if text.encode() in f.read() and _stat(int(name)) is not None:
                        out.append(int(name))
            except OSError:
                pass
    return out


def _store(run_dir: Path) -> tuple[dict, list[dict], list[dict], list[dict], list[dict]]:
    st = RunStore(run_dir / "store.sqlite", readonly=True)
    try:
        return st.run(), st.rounds(), st.updates(), st.attacks(), st.workers()
    finally:
        st.close()


def test_a_simulation_attached_to_a_cluster_places_the_worker_by_resource(cluster: Cluster, tmp_path: Path) -> None:
    import ray

    data = make_face_folder(tmp_path / "faces", users=3, photos=6)
    before = cluster.processes()
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=3", "rounds=2", *TINY, "attack.methods=ig",
                             "attack.iterations=4", "attack.every=1", f"simulation.ray_address={cluster.address}",
                             "attack.worker_resource=attack_worker"])
    res = run_federation(cfg, tmp_path / "runs")
    assert res.status == "finished", res.error
    run, rounds, updates, attacks, workers = _store(res.run_dir)
    assert [r["round"] for r in rounds] == [1, 2] and len(updates) == 6
    assert len(attacks) == 6 and all(a["status"] == "finished" for a in attacks), attacks
    # The worker ran on the node that carries the resource, on the CPU.
    assert len(workers) == 1 and workers[0]["device"] == "cpu"
    assert workers[0]["node_id"] == cluster.attack_node()
    # The run only disconnected: every process of the cluster still runs, and this process holds no Ray.
    assert not ray.is_initialized()
    assert all(same_process(p, t) for p, t in before.items())
    assert not (res.run_dir / "processes.json").exists()


def test_a_worker_killed_in_a_run_fails_its_job_and_the_run_goes_on(cluster: Cluster, tmp_path: Path) -> None:
    data = make_face_folder(tmp_path / "faces", users=3, photos=6)
    runs = tmp_path / "runs"
    # Round 1's job is long (~10 s alone here); it is killed as soon as it is submitted, from the round-1 progress
    # hook (the server's own thread, so round 2 waits for it): no sleep decides what gets killed.
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=3", "rounds=3", *TINY, "attack.methods=ig",
                             "attack.iterations=500", "attack.rounds=1,3", f"simulation.ray_address={cluster.address}",
                             "attack.worker_resource=attack_worker"])
    killed: list[int] = []

    def progress(rnd: int, rec: dict) -> None:
        if rnd != 1 or killed:
            return
        st = RunStore(next(runs.glob("*/store.sqlite")), readonly=True)
        try:
            deadline = time.time() + 30
            while not any(a["status"] == "running" for a in st.attacks() if a["round"] == 1):
                assert time.time() < deadline, "round 1's job was never submitted"
                time.sleep(0.05)
            pid = st.workers()[0]["pid"]
        finally:
            st.close()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    res = run_federation(cfg, runs, progress=progress)
    assert res.status == "finished", res.error
    run, rounds, updates, attacks, workers = _store(res.run_dir)
    assert killed and [r["round"] for r in rounds] == [1, 2, 3] and len(updates) == 9  # nothing lost
    by_round = {r: [a for a in attacks if a["round"] == r] for r in (1, 3)}
    assert len(by_round[1]) == 3 and all(a["status"] == "failed" and "died" in a["error"] for a in by_round[1])
    assert len(by_round[3]) == 3 and all(a["status"] == "finished" for a in by_round[3]), [(a["status"], a["error"]) for a in by_round[3]]
    # Ray restarted the worker, on the same node; the store records both starts.
    assert [w["pid"] for w in workers][0] == killed[0] and len(workers) == 2 and workers[1]["pid"] != killed[0]
    assert workers[0]["node_id"] == workers[1]["node_id"] == cluster.attack_node()


def test_an_unreachable_cluster_is_one_line_naming_the_key(tmp_path: Path) -> None:
    data = make_face_folder(tmp_path / "faces", users=2, photos=6)
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=2", "rounds=1", *TINY, "attack.enabled=false",
                             f"simulation.ray_address=127.0.0.1:{free_port()}"])
    t0 = time.time()
    with pytest.raises(ConfigError, match=r"config key 'simulation.ray_address': no Ray at 127\.0\.0\.1:\d+") as exc:
        run_federation(cfg, tmp_path / "runs")
    assert "\n" not in str(exc.value) and time.time() - t0 < 30
    (run_dir,) = (tmp_path / "runs").iterdir()
    run = _store(run_dir)[0]
    assert run["status"] == "failed" and "simulation.ray_address" in run["error"]


def test_attack_ray_address_in_a_simulation_must_be_the_simulations(tmp_path: Path) -> None:
    data = make_face_folder(tmp_path / "faces", users=2, photos=6)
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=2", "rounds=1", *TINY, "attack.methods=ig",
                             "attack.ray_address=10.0.0.1:6379"])
    with pytest.raises(ConfigError, match="config key 'attack.ray_address'"):
        run_federation(cfg, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_a_serverapp_process_connects_for_its_worker_and_checks_placement(cluster: Cluster) -> None:
    """The Deployment Engine's case: no Ray in the process; ``attack.ray_address`` is connected to, placement
    checked against the cluster's live nodes, and a second call in the same Ray changes nothing."""
    import ray

    from server.worker import check_placement, connect_worker_ray

    with pytest.raises(ConfigError, match=r"config key 'attack.ray_address': no Ray at"):
        connect_worker_ray(f"127.0.0.1:{free_port()}")
    assert not ray.is_initialized() and connect_worker_ray(cluster.address) is True
    try:
        check_placement(0.0, "attack_worker")
        with pytest.raises(ConfigError, match="config key 'attack.worker_resource': no node .* 'gpu_box'"):
            check_placement(0.0, "gpu_box")
        with pytest.raises(ConfigError, match="config key 'attack.worker_gpus': 1.0 GPU"):
            check_placement(1.0, "attack_worker")
        assert connect_worker_ray(cluster.address) is False  # already in that Ray: the caller owns nothing
        with pytest.raises(ConfigError, match="config key 'attack.ray_address': 127.0.0.1:1 is not the Ray"):
            connect_worker_ray("127.0.0.1:1")
    finally:
        ray.shutdown()
