"""identity_separation: known answers and agreement with a brute-force N x N computation."""

import numpy as np
import pytest

from fl_sim.core.data.info import identity_separation


def brute_force(emb: np.ndarray, owner: np.ndarray) -> dict[str, float]:
    sim = emb.astype(np.float64) @ emb.astype(np.float64).T
    n = len(emb)
    same, diff = [], []
    for i in range(n):
        for j in range(n):
            if i != j:
                (same if owner[i] == owner[j] else diff).append(sim[i, j])
    ids = np.unique(owner)
    hits = 0
    for i in range(n):
        scores = [np.mean([sim[i, j] for j in range(n) if owner[j] == v and j != i]) for v in ids]
        hits += ids[int(np.argmax(scores))] == owner[i]
    return {"same_identity_mean": float(np.mean(same)), "different_identity_mean": float(np.mean(diff)),
            "loo_reid": hits / n}


def test_orthogonal_identities_known_answer():
    # Prepare: 3 identities, each photo its identity's basis vector
    owner = np.array([0, 0, 1, 1, 1, 2, 2])
    emb = np.eye(4, dtype=np.float32)[owner]

    # Execute
    res = identity_separation(emb, owner)

    # Assert
    assert res["same_identity_mean"] == pytest.approx(1.0)
    assert res["different_identity_mean"] == pytest.approx(0.0)
    assert res["loo_reid"] == pytest.approx(1.0)


def test_swapped_photo_known_answer():
    # Prepare: one photo of identity 0 looks exactly like identity 1
    owner = np.array([0, 0, 0, 1, 1, 1])
    emb = np.eye(2, dtype=np.float32)[[0, 0, 1, 1, 1, 1]]

    # Execute
    res = identity_separation(emb, owner)

    # Assert: same pairs 6 (id 0) + 6 (id 1) ordered, 2+2 of them at 0; different pairs 18, 6 of them at 1
    assert res["same_identity_mean"] == pytest.approx(8 / 12)
    assert res["different_identity_mean"] == pytest.approx(6 / 18)
    assert res["loo_reid"] == pytest.approx(5 / 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_data(seed):
    # Prepare: uneven identity sizes (>= 2 photos each), labels neither sorted nor contiguous
    rng = np.random.default_rng(seed)
    labels = np.array([11, 4, 7, 30, 2])
    owner = rng.permutation(np.repeat(labels, rng.integers(2, 7, size=len(labels))))
    centers = rng.normal(size=(40, 16))
    emb = centers[owner] + 1.5 * rng.normal(size=(len(owner), 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)

    # Execute
    res = identity_separation(emb, owner)
    ref = brute_force(emb, owner)

    # Assert
    assert res["same_identity_mean"] == pytest.approx(ref["same_identity_mean"], abs=1e-5)
    assert res["different_identity_mean"] == pytest.approx(ref["different_identity_mean"], abs=1e-5)
    assert res["loo_reid"] == pytest.approx(ref["loo_reid"])
    assert 0.0 < ref["loo_reid"] < 1.0  # the data is neither trivial nor hopeless
