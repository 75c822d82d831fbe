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
    assert len(users) >= 100 and min(u.n_photos for u in users) >= 100  # batch 100 in the attack bench
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
    assert x.shape == (100, 3, 32, 32) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0


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


class _NoRenderer:
    """Stands in for the GAN (openvino is an optional install): records which photos were asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int, int]] = []

    def photos(self, split: str, i: int, ident: str, n_photos: int, start: int = 0) -> np.ndarray:
        self.asked.append((ident, start, n_photos))
        return np.full((n_photos - start, 8, 8, 3), 10 * i + start, dtype=np.uint8)

    def label(self, photos: np.ndarray) -> tuple[str, float, float]:
        raise AssertionError("an identity that keeps its first photos keeps its attributes")


def test_extending_keeps_every_old_photo_and_label_and_renders_only_the_new_ones(tmp_path) -> None:
    import zipfile

    from dataclasses import replace

    from fl_sim.core.data.synth import SynthSpec, _write_identities, _write_manifest

    spec = SynthSpec(users=2, photos_per_user=2, prior_identities=1, photos_per_prior_identity=1, size=8, label_photos=2)
    old_bytes = {f"u{u:04d}/{j:02d}.jpg": bytes([u, j]) * 7 for u in range(2) for j in range(2)}
    with zipfile.ZipFile(tmp_path / "users.zip", "w") as zf:
        for name, blob in old_bytes.items():
            zf.writestr(name, blob)
    with zipfile.ZipFile(tmp_path / "prior.zip", "w") as zf:
        zf.writestr("p00000/00.jpg", b"prior")
    records = [{"id": f"u{u:04d}", "split": "users", "index": u, "photos": 2, "gender": "male", "age_band": "<30"}
               for u in range(2)] + [{"id": "p00000", "split": "prior", "index": 0, "photos": 1, "gender": "female"}]
    (tmp_path / "identities.json").write_text(json.dumps(records))
    _write_manifest(spec, tmp_path, None, 0.0)
    renderer = _NoRenderer()
    _write_identities(replace(spec, photos_per_user=3), renderer, tmp_path, None)  # type: ignore[arg-type]
    assert renderer.asked == [("u0000", 2, 3), ("u0001", 2, 3)]  # photo 2 of each user, nothing else
    with zipfile.ZipFile(tmp_path / "users.zip") as zf:
        assert all(zf.read(name) == blob for name, blob in old_bytes.items())
        assert sorted(zf.namelist()) == sorted([*old_bytes, "u0000/02.jpg", "u0001/02.jpg"])
    with zipfile.ZipFile(tmp_path / "prior.zip") as zf:
        assert zf.read("p00000/00.jpg") == b"prior"
    new = json.loads((tmp_path / "identities.json").read_text())
    assert [(r["id"], r["photos"], r["gender"]) for r in new] == [("u0000", 3, "male"), ("u0001", 3, "male"),
                                                                  ("p00000", 1, "female")]
    # Another recipe is not extended: every photo is rendered again.
    renderer = _NoRenderer()
    with pytest.raises(AssertionError, match="keeps its attributes"):
        _write_identities(replace(spec, seed=1), renderer, tmp_path, None)  # type: ignore[arg-type]
    assert renderer.asked == [("u0000", 0, 2)]
