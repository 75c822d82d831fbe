"""The scorer at scale: embeddings cached on disk by content, photos read lazily, the others' average in O(n)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fl_sim.core.data import open_dataset
from fl_sim.core.evaluators import cache
from fl_sim.core.evaluators.face import identity_embedder
from fl_sim.core.scoring import LazyPhotos, UserTruth, others_averages

DATASET = "synthfaces"


def _photos(n: int = 3) -> torch.Tensor:
    ds = open_dataset(DATASET)
    return ds.photos(ds.users()[0].user, 32)[:n]


def test_a_cached_embedding_is_the_evaluators_own_and_is_read_back(tmp_path: Path) -> None:
    photos = _photos()
    direct = identity_embedder("sface").embed(photos)
    first = cache.embed("sface", photos, root=tmp_path)
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1 and np.array_equal(first, direct)
    # Read back, not recomputed: a planted entry under the same key is what comes out.
    np.save(files[0], np.full_like(direct, 7.0))
    assert np.all(cache.embed("sface", photos, root=tmp_path) == 7.0)


def test_other_pixels_or_another_evaluator_are_another_key(tmp_path: Path) -> None:
    photos = _photos()
    cache.embed("sface", photos, root=tmp_path)
    moved = photos.clone()
    moved[0, 0, 0, 0] = -moved[0, 0, 0, 0] + 0.5  # one pixel of one photo
    out = cache.embed("sface", moved, root=tmp_path)
    assert np.array_equal(out, identity_embedder("sface").embed(moved))
    assert len(list(tmp_path.rglob("*.npy"))) == 2
    assert cache.code_tag("sface") != cache.code_tag("dlib")


def test_a_broken_entry_is_recomputed_and_an_unwritable_cache_still_answers(tmp_path: Path) -> None:
    photos = _photos()
    direct = identity_embedder("sface").embed(photos)
    cache.embed("sface", photos, root=tmp_path)
    entry = next(tmp_path.rglob("*.npy"))
    entry.write_bytes(b"half a file")
    assert np.array_equal(cache.embed("sface", photos, root=tmp_path), direct)
    blocked = tmp_path / "a-file"  # a cache root under a plain file cannot be created, even by root
    blocked.write_text("")
    assert np.array_equal(cache.embed("sface", photos, root=blocked / "sub"), direct)
    assert not list(tmp_path.rglob("*.tmp"))  # no half-written entry left behind


def test_others_averages_known_answer() -> None:
    means = [torch.full((3, 2, 2), v) for v in (0.0, 1.0, 2.0)]
    out = others_averages(means)
    assert out.dtype == torch.float32
    assert [float(o.mean()) for o in out] == [1.5, 1.0, 0.5]
    assert torch.equal(others_averages(means[:1]), means[0][None])


def test_lazy_photos_hold_a_bounded_few_and_the_truth_matches_eager(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FL_SIM_CACHE", str(tmp_path))
    ds = open_dataset(DATASET)
    users = [r.user for r in ds.users()[:5]]
    attrs = {u: {"gender": None, "age_band": None} for u in users}
    lazy = LazyPhotos(DATASET, 32, 4, users, keep=2)
    with pytest.raises(KeyError):
        lazy["nobody"]
    truth = UserTruth(users, lazy, attrs, evaluators=("sface",))
    assert len(lazy._kept) <= 2  # noqa: SLF001 - the bound is the point
    eager = UserTruth(users, {u: ds.photos(u, 32)[:4] for u in users}, attrs, evaluators=("sface",))
    for u in users:
        assert torch.equal(lazy[u], eager.photos[u])
        assert np.array_equal(truth.embeddings["sface"][u], eager.embeddings["sface"][u])
        assert truth.average["sface"][u] == eager.average["sface"][u]
    assert list(tmp_path.rglob("*.npy"))  # the run's cache is where FL_SIM_CACHE says
