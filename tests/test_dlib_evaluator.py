"""The dlib identity evaluator: output contract, and that it tells the embedded identities apart."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from fl_sim.core.data.base import to_tensor
from fl_sim.core.data.info import identity_separation
from fl_sim.core.data.synthfaces import open_synthfaces
from fl_sim.core.errors import FlSimError
from fl_sim.core.evaluators.dlib_face import DlibEmbedder, dlib_embedder
from fl_sim.core.evaluators.face import to_uint8_hwc

USERS, PHOTOS = 8, 5  # dlib costs ~0.1 s per image on this CPU: keep the set small


@pytest.fixture(scope="module")
def faces() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """8 embedded users x 5 photos at 32x32, their owners, and their dlib embeddings."""
    ds = open_synthfaces("users")
    users = ds.users()[:USERS]
    x = to_tensor(np.concatenate([ds.photos_uint8(u.user)[:PHOTOS] for u in users]), 32)
    owner = np.repeat(np.arange(USERS), PHOTOS)
    return x, owner, dlib_embedder().embed(x)


def test_output_is_unit_norm_float32_128d(faces: tuple[torch.Tensor, np.ndarray, np.ndarray]) -> None:
    x, _, emb = faces
    assert emb.shape == (len(x), 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert dlib_embedder().embed(x[:0]).shape == (0, 128)
    # uint8 (N, H, W, 3) and [-1, 1] (N, 3, H, W), numpy or torch, are the same images.
    u8 = to_uint8_hwc(x[:2])
    np.testing.assert_allclose(dlib_embedder().embed(u8), emb[:2], atol=1e-5)
    np.testing.assert_allclose(dlib_embedder().embed(x[:2].numpy()), emb[:2], atol=1e-5)


def test_deterministic_and_batch_independent(faces: tuple[torch.Tensor, np.ndarray, np.ndarray]) -> None:
    x, _, emb = faces
    again = dlib_embedder().embed(x[:3], batch_size=2)
    np.testing.assert_allclose(again, emb[:3], atol=1e-5)


def test_separates_and_reidentifies_users(faces: tuple[torch.Tensor, np.ndarray, np.ndarray]) -> None:
    _, owner, emb = faces
    res = identity_separation(emb, owner)
    # Measured on these photos: same ~0.6, different ~0.05, re-identification ~0.95 (chance 1/8).
    assert res["same_identity_mean"] > res["different_identity_mean"] + 0.35
    assert res["different_identity_mean"] < 0.25  # centring works: unrelated faces are near 0
    assert res["loo_reid"] >= 0.75


def test_uncentred_descriptor_is_available_and_worse_spread(faces: tuple[torch.Tensor, np.ndarray, np.ndarray]) -> None:
    x, owner, _ = faces
    few = np.r_[0:3, PHOTOS:PHOTOS + 3]  # 2 users x 3 photos
    raw = DlibEmbedder(center=False).embed(x[few])
    res = identity_separation(raw, owner[few])
    # dlib's raw descriptors share a big common part: everyone looks ~0.9 similar.
    assert res["different_identity_mean"] > 0.7
    assert res["same_identity_mean"] > res["different_identity_mean"]


def test_average_face_and_grey_do_not_reidentify(faces: tuple[torch.Tensor, np.ndarray, np.ndarray]) -> None:
    x, owner, emb = faces
    e = dlib_embedder()
    means = torch.stack([x[owner == u].mean(0) for u in range(USERS)])
    # What scoring uses as the zero of identity gain: each user's "others' average face".
    others = torch.stack([means[np.arange(USERS) != u].mean(0) for u in range(USERS)])
    probes = torch.cat([others, means.mean(0, keepdim=True), torch.zeros(1, 3, 32, 32)])
    pe = e.embed(probes)
    sims = np.stack([[float((emb[owner == u] @ p).mean()) for u in range(USERS)] for p in pe])  # probe x user
    own = identity_separation(emb, owner)["same_identity_mean"]
    baseline = sims[np.arange(USERS), np.arange(USERS)]  # others' average face vs the user
    # The all-users average face gains ~nothing over each user's baseline; a real photo gains a lot.
    gain_avg = sims[USERS] - baseline
    assert abs(float(gain_avg.mean())) < 0.1
    assert own - float(baseline.mean()) > 0.3
    # Neither the average face nor a plain grey frame comes near a user's own photos. (An average
    # face does sit closer to "typical-looking" users, ~0.35 here, as it does under SFace: hence
    # the per-user baseline in scoring.)
    assert sims[USERS].max() < own - 0.15
    assert sims[USERS + 1].max() < own - 0.2


@pytest.mark.parametrize("bad", [np.zeros((2, 32, 32), np.float32), torch.zeros(2, 1, 32, 32),
                                 np.zeros((2, 3, 32, 32), np.uint8), np.zeros((32, 32, 3), np.uint8)])
def test_bad_shape_is_a_user_error(bad: np.ndarray | torch.Tensor) -> None:
    with pytest.raises(FlSimError):
        dlib_embedder().embed(bad)


def test_missing_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(FlSimError, match="face_recognition_models"):
        DlibEmbedder()
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(FlSimError, match="dlib"):
        DlibEmbedder()


def test_landmarks_are_sane(faces: tuple[torch.Tensor, np.ndarray, np.ndarray]) -> None:
    x, _, _ = faces
    pts = dlib_embedder().landmarks(x[::PHOTOS])  # one photo per user
    right_eye, left_eye, nose = pts[:, :2].mean(1), pts[:, 2:4].mean(1), pts[:, 4]
    assert np.all(nose[:, 1] > np.maximum(right_eye[:, 1], left_eye[:, 1]) + 0.1)  # eyes above the nose
    assert np.all((left_eye[:, 0] < nose[:, 0]) & (nose[:, 0] < right_eye[:, 0]))
