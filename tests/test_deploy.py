"""Flower's Deployment Engine on the loopback (`fl-sim deploy local`): the same run store as in simulation,
a SuperNode killed mid-run drops its user from the round and the run goes on, nothing started is left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fl_sim.core.config import load_config
from fl_sim.core.store import RunStore
from fl_sim.federation.deploy import deploy
from fl_sim.core.processes import descendants
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


def test_local_deployment_records_the_run_survives_a_killed_supernode_and_leaves_nothing(face_folder: Path,
                                                                                      tmp_path: Path) -> None:
    """3 users, 2 rounds, `ig` on everyone in round 1: round 1 lands as in simulation (3 updates, 3 finished
    attacks); then user 2's SuperNode is SIGKILLed, round 2 goes on without that user (recorded failed with
    Flower's reason), nothing of round 1 is lost, the run finishes, and no process it started is left.
    (One deployment for both checks: the kill costs Flower's ~60 s heartbeat timeout, a second one more.)"""
    before = _ours()
    cfg = load_config(None, [f"data.dataset=folder:{face_folder}", *TINY, "rounds=2", "attack.rounds=1",
                             "attack.methods=ig", "attack.iterations=20"])
    lines: list[str] = []
    hosts: dict[str, set[int]] = {}
    killed: list[int] = []

    def progress(rnd: int, rec: dict) -> None:
        lines.append(f"{rnd}:{rec.get('n_clients', 'drain')}")
        if rnd == 1:
            # Mid-run: what the SuperLink, the SuperNodes, their apps and the Ray head listen on; then the fault.
            hosts.update(listening_hosts(set(_ours())))
            for pid, cmd in _ours().items():
                if "flower-supernode" in cmd and "partition-id=2 " in cmd:
                    os.kill(pid, 9)
                    killed.append(pid)

    res = deploy(cfg, tmp_path / "runs", progress=progress, mode="local", say=lines.append)
    assert res.status == "finished", res.error
    assert killed, "the SuperNode was never killed"
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    rounds, updates, attacks, users = st.rounds(), st.updates(), st.attacks(), st.users()
    assert [r["round"] for r in rounds] == [1, 2] and [r["n_clients"] for r in rounds] == [3, 2]
    assert all(u["node_id"] for u in users)  # each user was a SuperNode of its own
    # Round 1 as in simulation, kept whole; round 2 without the killed user, who is recorded failed.
    assert sorted((u["round"], u["user"]) for u in updates) == \
        [(1, "user00"), (1, "user01"), (1, "user02"), (2, "user00"), (2, "user01")]
    assert sorted((a["round"], a["user"], a["status"]) for a in attacks) == \
        [(1, f"user{i:02d}", "finished") for i in range(3)]
    assert all((res.run_dir / a["image"]).is_file() for a in attacks)
    assert rounds[0]["metrics"]["failed"] == {}
    failed = rounds[1]["metrics"]["failed"]
    assert set(failed) == {"user02"} and "unavailable" in failed["user02"].lower(), failed
    assert "1:3" in lines and "2:2" in lines
    assert hosts and all(on_loopback(h) for h in hosts), f"listening beyond the loopback: {hosts}"
    assert any("SuperLink 127.0.0.1:" in ln for ln in lines)
    # The worker ran on the Ray head the deployment started (placed there by its resource).
    assert cfg.attack.ray_address.startswith("127.0.0.1:") and cfg.attack.worker_resource == "attack_worker"
    assert [w["node_ip"] for w in st.workers()] == ["127.0.0.1"]  # started once, on the loopback head
    st.close()
    left = {p: c for p, c in _ours().items() if p not in before}
    assert not left, f"processes left behind: {left}"


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
