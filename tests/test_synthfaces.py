"""The embedded identities: files match the manifest, splits are disjoint, the evaluator tells people apart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fl_sim.core.data import open_dataset
from fl_sim.core.data.base import to_tensor
from fl_sim.core.data.info import identity_separation, synthfaces_disjoint
from fl_sim.core.data.synth import identity_latent, sha256
from fl_sim.core.data.synthfaces import ASSET_DIR, open_synthfaces


def test_manifest_matches_every_file() -> None:
    manifest = json.loads((ASSET_DIR / "manifest.json").read_text())
    assert set(manifest["files"]) == {"users.zip", "prior.zip", "identities.json"}
    for name, meta in manifest["files"].items():
        assert sha256(ASSET_DIR / name) == meta["sha256"], name
    total = sum(meta["bytes"] for meta in manifest["files"].values())
    assert total <= 80 * 1024 * 1024


def test_counts_and_attributes() -> None:
    users, prior = open_synthfaces("users").users(), open_synthfaces("prior").users()
    assert len(users) >= 100 and min(u.n_photos for u in users) >= 80
    assert sum(u.n_photos for u in prior) >= 10000
    genders = {u.attributes["gender"] for u in users}
    assert genders == {"female", "male"}  # both genders present: the attribute task has two classes
    assert all(u.attributes["age_band"] in ("<30", "30-44", "45+") for u in users)


def test_splits_are_disjoint_by_latent() -> None:
    u, p = open_synthfaces("users").identities(), open_synthfaces("prior").identities()
    assert synthfaces_disjoint(u, p)
    # ...and the check would see a reused latent
    clash = dict(p[0], latent=dict(u[0]["latent"]))
    assert not synthfaces_disjoint(u, [clash, *p[1:]])
    assert np.array_equal(identity_latent(1, "users", 3), identity_latent(1, "users", 3))


def test_photos_load_at_any_size() -> None:
    ds = open_dataset("synthfaces")
    x = ds.photos(ds.users()[0].user, 32)
    assert x.shape == (80, 3, 32, 32) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0


@pytest.mark.parametrize("size", [32])
def test_sface_separates_identities_on_a_subset(size: int) -> None:
    from fl_sim.core.evaluators.face import sface

    ds = open_synthfaces("users")
    users = ds.users()[:12]
    photos = np.concatenate([ds.photos_uint8(u.user)[:10] for u in users])
    owner = np.repeat(np.arange(len(users)), 10)
    res = identity_separation(sface().embed(to_tensor(photos, size)), owner)
    assert res["same_identity_mean"] > res["different_identity_mean"] + 0.2
    assert res["loo_reid"] > 0.9
