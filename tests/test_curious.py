"""The curious server and its attack worker: no effect on training, failures recorded, knowledge separated."""

from __future__ import annotations

import ast
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from fl_sim.core.config import load_config
from fl_sim.federation import init_run, run_federation
from fl_sim.core.models import task_heads
from fl_sim.core.store import RunStore
from tests.conftest import REPO, make_face_folder

TINY = ["data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2", "model.width=4"]


def _attacks(run_dir: Path) -> list[dict]:
    st = RunStore(run_dir / "store.sqlite", readonly=True)
    attacks = st.attacks()
    st.close()
    return sorted(attacks, key=lambda a: (a["round"], a["user"], a["method"]))


def test_attacks_change_nothing_clients_or_aggregation_see_and_repeat_exactly(tmp_path: Path) -> None:
    data = make_face_folder(tmp_path / "faces", users=3, photos=6)
    base = [f"data.dataset=folder:{data}", "users=3", "rounds=2", "protocol=fedavg", *TINY, "attack.enabled=false"]
    attack = ["attack.enabled=true", "attack.methods=ig,diffusion", "attack.iterations=4", "attack.every=1"]
    off = run_federation(load_config(None, base), tmp_path / "off")
    on = run_federation(load_config(None, [*base, *attack]), tmp_path / "on")
    again = run_federation(load_config(None, [*base, *attack]), tmp_path / "again")
    assert off.status == on.status == again.status == "finished", (off.error, on.error, again.error)
    a, b = torch.load(off.run_dir / "final_model.pt"), torch.load(on.run_dir / "final_model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    attacks = _attacks(on.run_dir)
    assert len(attacks) == 2 * 3 * 2 and all(x["status"] == "finished" for x in attacks)
    assert all({"sface_face_similarity", "dlib_face_similarity", "identity_gain"} <= set(x["metrics"])
               and (on.run_dir / x["image"]).exists() for x in attacks)
    # Stored at native size (16 px here): no frame, no upscale.
    from PIL import Image

    assert all(Image.open(on.run_dir / x["image"]).size == (16, 16) for x in attacks)
    # Same seed, same results: every reconstruction (PNG bytes) and every metric repeats.
    repeat = _attacks(again.run_dir)
    assert [(x["round"], x["user"], x["method"]) for x in attacks] == [(x["round"], x["user"], x["method"]) for x in repeat]
    for x, y in zip(attacks, repeat):
        assert (on.run_dir / x["image"]).read_bytes() == (again.run_dir / y["image"]).read_bytes(), x["image"]
        drop = ("seconds",)
        assert {k: v for k, v in x["metrics"].items() if k not in drop} == \
            {k: v for k, v in y["metrics"].items() if k not in drop}
    _inspect_and_export(on.run_dir, attacks)


def _inspect_and_export(run_dir: Path, attacks: list[dict]) -> None:
    """What a user reads afterwards: the inspect table, a panel per user, the export's statuses."""
    import json
    import subprocess

    from PIL import Image

    from tests.conftest import FL_SIM

    runs, rid = str(run_dir.parent), run_dir.name
    table = json.loads(subprocess.run([str(FL_SIM), "inspect", rid, "--runs-dir", runs, "--json"],
                                      capture_output=True, text=True, check=True).stdout)["attacks"]
    assert {(r["round"], r["user"], r["method"]) for r in table} == {(a["round"], a["user"], a["method"]) for a in attacks}
    assert all(1 <= r["reid_rank"] <= r["n_users"] == 3 and r["true_gender"] is not None for r in table)
    one = json.loads(subprocess.run([str(FL_SIM), "inspect", rid, "--runs-dir", runs, "--user", "user01", "--round", "2",
                                     "--json"], capture_output=True, text=True, check=True).stdout)
    assert {r["method"] for r in one["attacks"]} == {"ig", "diffusion"} and {r["round"] for r in one["attacks"]} == {2}
    assert Image.open(one["panel"]).size[0] > 300 and set(one["context"]) >= {"within_user_min", "between_user_mean"}
    exported = json.loads(subprocess.run([str(FL_SIM), "export", rid, "--runs-dir", runs], capture_output=True,
                                         text=True, check=True).stdout)
    assert all(a["status"] == "finished" and {"sface_reid_rank", "dlib_reid_rank", "reid_rank"} <= set(a["metrics"])
               and (run_dir / a["image"]).exists() for a in exported["attacks"])
    bad = subprocess.run([str(FL_SIM), "inspect", rid, "--runs-dir", runs, "--user", "nobody"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "no user 'nobody'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.fixture
def dispatcher(tmp_path: Path):  # noqa: ANN201 - yields (dispatcher, store, observations)
    import ray

    from server.curious import AttackDispatcher
    from server.observe import build_observation
    from server.worker import make_remote_worker

    data = make_face_folder(tmp_path / "faces", users=2, photos=6)
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=2", "rounds=2", "attack.enabled=true",
                             "attack.methods=ig", "attack.iterations=2", *TINY])
    users, _, run_dir = init_run(cfg, tmp_path / "runs")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="error", log_to_driver=False)
    try:
        store = RunStore(run_dir / "store.sqlite")
        heads = task_heads(cfg.task, users)
        from fl_sim.core.models import build_model

        model = build_model(cfg.model.name, heads, 16, 4, 0)
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        moved = {k: v - 0.01 for k, v in state.items()}
        d = AttackDispatcher(cfg, heads, users, run_dir, store, make_remote_worker(0, 0))
        obs = [build_observation(cfg, heads, state, moved, {"num-examples": 4, "lr": 0.01, "local-steps": 1},
                                 rnd=1, user=u) for u in users]
        yield d, store, obs, cfg, run_dir
        store.close()
    finally:
        ray.shutdown()


def _job(d, obs, cfg, run_dir, rnd: int, **kw):  # noqa: ANN001, ANN202
    from attacks.methods import method_config
    from server.worker import AttackJob

    ids = {(o.user, "ig"): d.store.add_attack(rnd=rnd, user=o.user, method="ig", status="queued") for o in obs}
    job = AttackJob(job_id=rnd, round=rnd, observations=obs, targets=[o.user for o in obs], methods=["ig"],
                    attack_configs={"ig": method_config("ig", **kw)}, prior="faces32", dataset=cfg.data.dataset, image_size=16,
                    photos_per_user=4, run_users=[o.user for o in obs], run_dir=str(run_dir))
    return job, ids


def test_a_raising_job_is_recorded_failed_and_the_next_succeeds(dispatcher) -> None:  # noqa: ANN001
    d, store, obs, cfg, run_dir = dispatcher
    bad, bad_ids = _job(d, obs, cfg, run_dir, 1, iterations=2)
    bad.fail_with = "boom"
    d.submit(bad, bad_ids)
    good, good_ids = _job(d, obs, cfg, run_dir, 2, iterations=2)
    d.submit(good, good_ids)
    d.drain(120)
    rows = {a["id"]: a for a in store.attacks()}
    assert all(rows[i]["status"] == "failed" and "boom" in rows[i]["error"] for i in bad_ids.values())
    assert all(rows[i]["status"] == "finished" for i in good_ids.values())


def test_a_killed_worker_fails_its_job_and_is_restarted(dispatcher) -> None:  # noqa: ANN001
    import ray

    d, store, obs, cfg, run_dir = dispatcher
    pid = ray.get(d.worker.pid.remote())
    long, long_ids = _job(d, obs, cfg, run_dir, 1, iterations=100000)
    d.submit(long, long_ids)
    time.sleep(3)
    assert ray.get(d.worker.pid.remote(), timeout=10) == pid  # the probe answers while a job runs
    os.kill(pid, signal.SIGKILL)
    d.drain(60)
    rows = {a["id"]: a for a in store.attacks()}
    assert all(rows[i]["status"] == "failed" and "died" in rows[i]["error"] for i in long_ids.values())
    after, after_ids = _job(d, obs, cfg, run_dir, 2, iterations=2)
    d.submit(after, after_ids)
    d.drain(120)
    rows = {a["id"]: a for a in store.attacks()}
    assert all(rows[i]["status"] == "finished" for i in after_ids.values()), [(rows[i]["status"], rows[i]["error"]) for i in after_ids.values()]
    assert ray.get(d.worker.pid.remote()) != pid


def test_unfinished_jobs_are_marked_after_the_drain_timeout(dispatcher) -> None:  # noqa: ANN001
    d, store, obs, cfg, run_dir = dispatcher
    job, ids = _job(d, obs, cfg, run_dir, 1, iterations=100000)
    d.submit(job, ids)
    d.drain(1)
    assert all(a["status"] == "unfinished" for a in store.attacks())


def test_attacks_cannot_reach_the_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # By construction: the attacks package imports nothing that loads data...
    for path in (REPO / "attacks").rglob("*.py"):
        tree = ast.parse(path.read_text())
        mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in mods if m.split(".")[0] in ("fl_sim", "server", "clients")], path
    # ...and at run time an attack succeeds while every dataset loader is poisoned.
    import fl_sim.core.data as data_mod
    from attacks.methods import AttackConfig, run_attack
    from server.observe import build_observation

    cfg = load_config(None, ["users=1", "task=attributes", *TINY])
    heads = task_heads(cfg.task, ["u"])
    from fl_sim.core.models import build_model

    state = {k: v.numpy() for k, v in build_model("convnet", heads, 16, 4, 0).state_dict().items()}
    obs = build_observation(cfg, heads, state, {k: v * 0.99 for k, v in state.items()},
                            {"num-examples": 4, "lr": 0.01}, rnd=1, user="u")

    def poisoned(*_a: object, **_k: object) -> None:
        raise AssertionError("an attack reached the dataset")

    monkeypatch.setattr(data_mod.DATASETS, "get", poisoned)
    monkeypatch.setattr(data_mod, "open_dataset", poisoned)
    rec = run_attack("ig", [obs], None, AttackConfig(iterations=2))[0]
    assert rec.image.shape == (3, 16, 16)


def test_the_curious_server_works_inside_flowers_dp_wrapper(tmp_path: Path) -> None:
    # Server-side fixed clipping wraps the curious strategy: the curious server then sees (and
    # attacks) the clipped updates it aggregates, and the run completes with every attack scored.
    import numpy as np
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    data = make_face_folder(tmp_path / "faces", users=3, photos=6)
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=3", "rounds=2", "protocol=fedsgd", "lr=1.0", *TINY,
                             "attack.enabled=true", "attack.methods=ig", "attack.iterations=3", "attack.every=1"])
    clip = 1e-3
    res = run_federation(cfg, tmp_path / "runs", wrap=lambda s: DifferentialPrivacyServerSideFixedClipping(
        s, noise_multiplier=0.1, clipping_norm=clip, num_sampled_clients=3))
    assert res.status == "finished", res.error
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    updates, attacks = st.updates(), st.attacks()
    st.close()
    assert len(attacks) == 2 * 3 and all(a["status"] == "finished" for a in attacks)
    norms = [u["update_norm"] for u in updates]
    assert len(norms) == 2 * 3 and all(n is not None and n <= clip * (1 + 1e-4) for n in norms), norms
    assert np.isfinite(norms).all()
