"""Tactic imprint inside the federation: the server ships its target an imprint block, reads single photos out of the
target's update, and the shared model's aggregation stays honest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# synthfaces users (the bin thresholds come from its public prior split: the same kind of faces), FedSGD, one round.
BASE = ["data.dataset=synthfaces", "users=3", "rounds=1", "protocol=fedsgd", "data.image_size=16",
        "data.photos_per_user=12", "data.holdout_per_user=2", "model.width=4"]


def _run(tmp_path: Path, extra: list[str]):  # noqa: ANN202 - (result, rounds, attacks)
    from fl_sim.core.config import load_config
    from fl_sim.core.store import RunStore
    from fl_sim.federation import run_federation

    res = run_federation(load_config(None, [*BASE, *extra]), tmp_path / "runs")
    assert res.status == "finished", res.error
    st = RunStore(res.run_dir / "store.sqlite", readonly=True)
    rounds, attacks = st.rounds(), st.attacks()
    st.close()
    return res, rounds, attacks


def test_imprint_recovers_the_targets_photos_and_aggregation_stays_honest(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from server.strategy import SeededFedAvg

    # What FedAvg itself is handed (the ServerApp runs in this process): every reply's arrays and weight.
    seen: list[tuple[dict[str, np.ndarray], float]] = []
    aggregate = SeededFedAvg.aggregate_train

    def spy(self, server_round, replies):  # noqa: ANN001, ANN202
        replies = list(replies)
        seen.extend(({k: v.numpy().copy() for k, v in m.content.array_records["arrays"].items()},
                     float(m.content.metric_records["metrics"][self.weighted_by_key])) for m in replies)
        return aggregate(self, server_round, replies)

    monkeypatch.setattr(SeededFedAvg, "aggregate_train", spy)
    res, rounds, attacks = _run(tmp_path, ["attack.methods=ig", "attack.iterations=2", "adversary.mode=malicious",
                                           "adversary.tactic=imprint", "adversary.users=u0001"])
    assert rounds[0]["metrics"]["adversary"] == {"tactic": "imprint", "targets": ["u0001"], "crafted": [],
                                                 "recovered": ["u0001"]}
    # The crafted round attacks the target only, with the tactic's read-out (the others are not attacked).
    assert [(a["user"], a["method"], a["status"]) for a in attacks] == [("u0001", "imprint", "finished")], attacks
    m = attacks[0]["metrics"]
    assert m["source"] == "imprint" and m["photos_total"] == 12 and len(m["photos"]) == min(12, m["candidates"])
    for e in m["photos"]:
        assert {"photo", "psnr", "ssim", "face_similarity", "recovered"} <= set(e)
    print("photos_recovered", m["photos_recovered"], "psnr_matched_mean", m["psnr_matched_mean"], "candidates",
          m["candidates"], "mixed", m["candidates_mixed"], "reid_top1", m["reid_top1"])
    assert m["photos_recovered"] > 0.5, m["photos_recovered"]
    assert "reid_top1" in m and "mean_recovery_reid_top1" in m
    assert (res.run_dir / attacks[0]["image"]).exists()
    # The block's keys never reach FedAvg nor the next global model, which is the honest FedAvg of the shared keys.
    final = torch.load(res.run_dir / "final_model.pt")
    assert len(seen) == 3 and all(not k.startswith("imprint.") for arrays, _ in seen for k in arrays)
    assert not [k for k in final if k.startswith("imprint.")] and set(final) == set(seen[0][0])
    total = sum(w for _, w in seen)
    for k, v in final.items():
        honest = sum(arrays[k].astype(np.float64) * (w / total) for arrays, w in seen)
        np.testing.assert_allclose(v.numpy(), honest, rtol=0, atol=1e-6, err_msg=k)


def test_the_curious_server_recovers_no_single_photo(tmp_path: Path) -> None:
    # The same federation, honest: ig's reconstruction of the same user is far from any of their photos.
    import numpy as np
    from PIL import Image

    from fl_sim.core.data import open_dataset
    from fl_sim.core.metrics import psnr

    res, _, attacks = _run(tmp_path, ["attack.methods=ig", "attack.iterations=30", "attack.users=u0001"])
    (c,) = attacks
    assert c["status"] == "finished"
    rec = torch.from_numpy(np.asarray(Image.open(res.run_dir / c["image"]), dtype=np.float32) / 127.5 - 1)
    photos = open_dataset("synthfaces").photos("u0001", 16)[:12]
    best = max(psnr(rec.permute(2, 0, 1)[None], p[None]) for p in photos)
    print("curious ig: best PSNR to any photo", best)
    assert best < 25.0


def test_inspect_shows_per_photo_recoveries(tmp_path: Path) -> None:
    from fl_sim.experiments.inspect_run import imprint_lines

    rows = [{"round": 1, "user": "u0001", "method": "imprint", "status": "finished",
             "metrics": {"photos_recovered": 0.75, "photos_total": 12, "psnr_matched_mean": 31.2, "reid_top1": 1,
                         "mean_recovery_reid_top1": 0, "candidates": 20, "candidates_mixed": 3,
                         "photos": [{"psnr": 30.0}] * 12}}]
    header, line = imprint_lines(rows)
    assert "25 dB" in header
    assert "u0001" in line and "9/12" in line and "31.2" in line


@pytest.mark.parametrize("bad,key", [
    (["defenses.secagg.enabled=true", "defenses.secagg.reconstruction_threshold=2"], "adversary.tactic"),
    (["adversary.imprint.bins=1"], "adversary.imprint.bins"),
])
def test_imprint_on_an_unsupported_setup_is_one_line(tmp_path: Path, bad: list[str], key: str) -> None:
    from fl_sim.core.config import load_config
    from fl_sim.core.errors import ConfigError
    from fl_sim.federation import run_federation

    runs = tmp_path / "runs"
    with pytest.raises(ConfigError) as err:
        run_federation(load_config(None, [*BASE, "adversary.mode=malicious", "adversary.tactic=imprint", *bad]), runs)
    line = str(err.value)
    assert "\n" not in line and f"'{key}'" in line, line
    assert not runs.exists() or not any(runs.iterdir())
