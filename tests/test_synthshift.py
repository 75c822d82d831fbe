"""The shifted identities: the file matches its manifest, the set opens as documented, its people are new."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fl_sim.core.data import FaceDataset, open_dataset
from fl_sim.core.data.base import to_tensor
from fl_sim.core.data.info import identity_separation, synthfaces_disjoint
from fl_sim.core.data.synth import PRESETS, SPLIT_CODES, sha256
from fl_sim.core.data.synthfaces import open_synthfaces
from fl_sim.core.data.synthshift import ARCHIVE, ASSET_DIR, extract_once, identities, open_synthshift

MANIFEST = json.loads((ASSET_DIR / "manifest.json").read_text())


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaceDataset]:
    """The dataset as `open_dataset` gives it, extracted into a throw-away cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FL_SIM_CACHE", str(tmp_path_factory.mktemp("cache")))
        open_synthshift.cache_clear()
        yield open_dataset("synthshift")
        open_synthshift.cache_clear()


def test_manifest_matches_the_shipped_file() -> None:
    assert set(MANIFEST["files"]) == {"users.zip"}
    meta = MANIFEST["files"]["users.zip"]
    assert sha256(ARCHIVE) == meta["sha256"]
    assert ARCHIVE.stat().st_size == meta["bytes"] <= 12 * 1024 * 1024


def test_manifest_records_the_preset() -> None:
    spec = PRESETS["shifted"]
    assert MANIFEST["dataset"] == "synthshift"
    assert (MANIFEST["seed"], MANIFEST["image_size"]) == (spec.seed, spec.size)
    assert (MANIFEST["recipe"]["truncation"], MANIFEST["recipe"]["photo_noise"]) == (spec.truncation, spec.photo_noise)
    assert MANIFEST["counts"] == {"users": spec.users, "photos_per_user": spec.photos_per_user,
                                  "images": spec.users * spec.photos_per_user}
    assert set(MANIFEST["why"]) >= {"seed", "truncation", "photo_noise"}


def test_opens_with_documented_counts_sizes_and_attributes(shifted: FaceDataset) -> None:
    users = shifted.users()
    assert shifted.spec == "synthshift"
    assert len(users) == MANIFEST["counts"]["users"]
    assert {u.n_photos for u in users} == {MANIFEST["counts"]["photos_per_user"]}
    assert [u.user for u in users] == sorted(MANIFEST["identities"]["users"])
    for u in users:
        assert u.attributes["gender"] in ("female", "male"), u
        assert u.attributes["age_band"] in ("<30", "30-44", "45+"), u
    assert {u.attributes["gender"] for u in users} == {"female", "male"}
    photos = shifted.photos_uint8(users[0].user)
    assert photos.shape == (MANIFEST["counts"]["photos_per_user"], 64, 64, 3) and photos.dtype == np.uint8


def test_extraction_happens_once_per_archive(tmp_path: Path) -> None:
    first = extract_once(ARCHIVE, tmp_path)
    stamp = (first / "attributes.csv").stat().st_mtime_ns
    assert extract_once(ARCHIVE, tmp_path) == first
    assert (first / "attributes.csv").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folder left behind


def test_identities_are_disjoint_from_the_embedded_users_and_prior() -> None:
    embedded = open_synthfaces("users").identities() + open_synthfaces("prior").identities()
    assert MANIFEST["seed"] not in {i["latent"]["seed"] for i in embedded}
    ours = identities()
    assert len(ours) == MANIFEST["counts"]["users"] and MANIFEST["identities"]["split_code"] == SPLIT_CODES["users"]
    assert synthfaces_disjoint(ours, embedded)  # compares the latent vectors, not the names
    assert not {i["id"] for i in embedded} & set(MANIFEST["identities"]["users"])


def test_sface_finds_same_user_photos_more_similar(shifted: FaceDataset) -> None:
    from fl_sim.core.evaluators.face import sface

    users = shifted.users()[:15]
    photos = np.concatenate([shifted.photos_uint8(u.user)[:8] for u in users])
    owner = np.repeat(np.arange(len(users)), 8)
    res = identity_separation(sface().embed(to_tensor(photos, 32)), owner)
    assert res["same_identity_mean"] > res["different_identity_mean"] + 0.15
    assert res["loo_reid"] > 0.8
