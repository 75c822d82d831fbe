"""The federation on Flower's Simulation Engine (Ray): recorded rounds, exact aggregation, kill safety."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from fl_sim.experiments.bench import plain_federation
from fl_sim.core.config import load_config
from fl_sim.federation import run_federation
from fl_sim.core.store import RunStore
from tests.conftest import FL_SIM, make_face_folder

TINY = ["data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2", "model.width=4", "attack.enabled=false"]


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_flower_run_matches_plain_loop_and_records_every_update(tmp_path: Path, protocol: str) -> None:
    # Prepare: 3 users, 2 rounds, 2 clients sampled per round (seeded)
    data = make_face_folder(tmp_path / "faces", users=3, photos=6)
    cfg = load_config(None, [f"data.dataset=folder:{data}", "users=3", "rounds=2", f"protocol={protocol}",
                             "clients_per_round=2", "local_batch_size=2", *TINY])
    # Execute
    res = run_federation(cfg, tmp_path / "runs")
    # Assert: the run finished and stored 2 rounds, 2 updates each, from the seeded sample
    assert res.status == "finished", res.error
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    rounds, updates = st.rounds(), st.updates()
    assert [r["round"] for r in rounds] == [1, 2]
    for rnd in (1, 2):
        got = sorted(u["user"] for u in updates if u["round"] == rnd)
        assert got == cfg.round_users(["user00", "user01", "user02"], rnd)
    assert all(u["update_norm"] > 0 and u["num_examples"] == 4 for u in updates)
    assert all(r["accuracy"] is not None for r in rounds)
    # ...and Flower's aggregate equals the plain in-process loop's model (exact FedAvg / FedSGD)
    flower = torch.load(res.run_dir / "final_model.pt")
    plain, _ = plain_federation(cfg)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(flower[k], v, atol=1e-5, rtol=1e-5)
    assert st.run()["status"] == "finished"
    st.close()


def test_bad_config_leaves_no_run_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for bad in (["--set", "rounds=-2"], ["--set", "no_such_key=1"], ["--set", "users=abc"],
                ["--set", "users=500", "--set", f"data.dataset=folder:{make_face_folder(tmp_path / 'f', users=2)}"]):
        res = subprocess.run([str(FL_SIM), "run", "--runs-dir", str(runs), *bad], capture_output=True, text=True)
        assert res.returncode == 2, bad
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("fl-sim: error")]
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert not runs.exists() or not any(runs.iterdir())
