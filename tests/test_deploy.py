"""Flower's Deployment Engine on the loopback (`fl-sim deploy local`): the same run store as in simulation,
a SuperNode killed mid-run drops its user from the round and the run goes on, nothing started is left."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from fl_sim.core.config import load_config
from fl_sim.core.store import RunStore
from fl_sim.federation.deploy import deploy
from fl_sim.federation.processes import descendants
from tests.loopback import listening_hosts, on_loopback

TINY = ["data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2", "model.width=4", "users=3"]
FLOWER_OR_RAY = ("flower-", "flwr", "ray", "gcs_server", "raylet")


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours() -> dict[int, str]:
    """Flower and Ray processes descending from this test process, by pid."""
    return {p: c for p in descendants(os.getpid()) if any(k in (c := _cmd(p)) for k in FLOWER_OR_RAY)}


def test_local_deployment_records_rounds_updates_and_attacks_and_leaves_nothing(face_folder: Path,
                                                                                tmp_path: Path) -> None:
    before = _ours()
    cfg = load_config(None, [f"data.dataset=folder:{face_folder}", *TINY, "rounds=2", "attack.rounds=1",
                             "attack.methods=ig", "attack.iterations=20"])
    lines: list[str] = []
    hosts: dict[str, set[int]] = {}

    def progress(rnd: int, rec: dict) -> None:
        lines.append(f"{rnd}:{rec.get('n_clients', 'drain')}")
        if rnd == 1:  # mid-run: what the SuperLink, the SuperNodes, their apps and the Ray head listen on
            hosts.update(listening_hosts(set(_ours())))

    res = deploy(cfg, tmp_path / "runs", progress=progress, mode="local", say=lines.append)
    assert res.status == "finished", res.error
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    rounds, updates, attacks, users = st.rounds(), st.updates(), st.attacks(), st.users()
    assert [r["round"] for r in rounds] == [1, 2] and all(r["n_clients"] == 3 for r in rounds)
    assert sorted((u["round"], u["user"]) for u in updates) == [(r, f"user{i:02d}") for r in (1, 2) for i in range(3)]
    assert all(u["node_id"] for u in users)  # each user was a SuperNode of its own
    assert sorted((a["round"], a["user"], a["status"]) for a in attacks) == \
        [(1, f"user{i:02d}", "finished") for i in range(3)]
    assert all((res.run_dir / a["image"]).is_file() for a in attacks)
    assert "1:3" in lines and "2:3" in lines
    assert hosts and all(on_loopback(h) for h in hosts), f"listening beyond the loopback: {hosts}"
    assert any("SuperLink 127.0.0.1:" in ln for ln in lines)
    # The worker ran on the Ray head the deployment started (placed there by its resource).
    assert cfg.attack.ray_address.startswith("127.0.0.1:") and cfg.attack.worker_resource == "attack_worker"
    left = {p: c for p, c in _ours().items() if p not in before}
    assert not left, f"processes left behind: {left}"


def test_a_killed_supernode_fails_its_user_and_the_run_goes_on(face_folder: Path, tmp_path: Path) -> None:
    cfg = load_config(None, [f"data.dataset=folder:{face_folder}", *TINY, "rounds=2", "attack.enabled=false"])
    runs = tmp_path / "runs"
    killed: list[int] = []

    def kill_when_discovered() -> None:
        # Once the server has asked every node for its user (node ids stored), SIGKILL user 2's SuperNode.
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            for store in runs.glob("*/store.sqlite"):
                try:
                    st = RunStore(store, readonly=True)
                    ready = sum(1 for u in st.users() if u["node_id"]) == 3
                    st.close()
                except Exception:  # noqa: BLE001 - the store may be mid-creation
                    ready = False
                if ready:
                    for pid, cmd in _ours().items():
                        if "flower-supernode" in cmd and "partition-id=2 " in cmd:
                            os.kill(pid, 9)
                            killed.append(pid)
            time.sleep(0.2)

    t = threading.Thread(target=kill_when_discovered, daemon=True)
    t.start()
    res = deploy(cfg, runs, mode="local", say=lambda s: None)
    t.join(timeout=5)
    assert killed, "the SuperNode was never killed"
    assert res.status == "finished", res.error
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    rounds, updates = st.rounds(), st.updates()
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:  # user 2 is failed in each round after the kill; the others trained in every round
        assert set(r["metrics"]["failed"]) == {"user02"}, r["metrics"]
        assert "Node Unavailable" in r["metrics"]["failed"]["user02"] or "node" in r["metrics"]["failed"]["user02"].lower()
        assert r["n_clients"] == 2
    assert sorted((u["round"], u["user"]) for u in updates) == [(r, f"user{i:02d}") for r in (1, 2) for i in range(2)]
    assert not any(p in descendants(os.getpid()) for p in killed)


def test_a_failing_app_run_fails_with_its_reason(face_folder: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`flwr run` exits 0 whatever the run did; `fl-sim deploy` reports the run's own status and error. Here the
    ServerApp (its own process, behind a simulation SuperLink) finds the run's config snapshot broken."""
    import fl_sim.federation.deploy as dep

    real = dep.init_run

    def init_then_break(cfg, runs_dir):  # noqa: ANN001, ANN202
        ids, run_id, run_dir = real(cfg, runs_dir)
        (run_dir / "config.toml").write_text("rounds = 0\n")
        return ids, run_id, run_dir

    monkeypatch.setattr(dep, "init_run", init_then_break)
    monkeypatch.chdir(tmp_path)  # a relative runs folder, as the CLI's default: the processes run elsewhere
    cfg = load_config(None, [f"data.dataset=folder:{face_folder}", *TINY, "rounds=1", "attack.enabled=false"])
    res = deploy(cfg, Path("runs"), mode="sim", say=lambda s: None)
    assert res.status == "failed"
    assert "rounds" in (res.error or ""), res.error
