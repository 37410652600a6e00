"""Chunked cosine k-NN against a brute-force full similarity matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scan.knn import knn, neighbor_accuracy


def brute_force(features: np.ndarray, k: int, queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Full cosine similarity in float64; self matches removed by putting −inf on the diagonal."""
    db = features / np.linalg.norm(features, axis=1, keepdims=True)
    q = db if queries is None else queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sim = q @ db.T
    if queries is None:
        np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, 1)


def _features(n: int = 37, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("chunk", [2048, 37, 10, 7, 1])
def test_knn_equals_brute_force_for_any_chunk(chunk):
    feats = _features()
    expected_idx, expected_sim = brute_force(feats, k=5)
    idx, sim = knn(torch.tensor(feats, dtype=torch.float32), k=5, chunk=chunk)
    assert idx.dtype == torch.int64 and sim.dtype == torch.float32
    assert idx.shape == (37, 5)
    np.testing.assert_array_equal(idx.numpy(), expected_idx)
    np.testing.assert_allclose(sim.numpy(), expected_sim, atol=1e-5)


def test_knn_is_scale_invariant_cosine():
    feats = _features(20, 4)
    scaled = feats * np.random.default_rng(3).uniform(0.1, 10, size=(20, 1))
    a, _ = knn(torch.tensor(feats, dtype=torch.float32), k=4)
    b, _ = knn(torch.tensor(scaled, dtype=torch.float32), k=4)
    assert torch.equal(a, b)


def test_knn_excludes_self_by_index_but_finds_exact_duplicates_first():
    feats = _features(15, 5, seed=2)
    feats[9] = feats[4]  # exact duplicate pair (4, 9)
    idx, sim = knn(torch.tensor(feats, dtype=torch.float32), k=3, chunk=4)
    for i in range(15):
        assert i not in idx[i].tolist()
    assert idx[4, 0].item() == 9
    assert idx[9, 0].item() == 4
    assert sim[4, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert sim[9, 0].item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("chunk", [2048, 3])
def test_knn_with_separate_queries(chunk):
    feats = _features(25, 6, seed=4)
    queries = _features(8, 6, seed=5)
    queries[2] = feats[11] * 3.0  # a query equal (in direction) to a database row: found, not excluded
    expected_idx, expected_sim = brute_force(feats, k=4, queries=queries)
    idx, sim = knn(torch.tensor(feats, dtype=torch.float32), k=4,
                   queries=torch.tensor(queries, dtype=torch.float32), chunk=chunk)
    assert idx.shape == (8, 4)
    np.testing.assert_array_equal(idx.numpy(), expected_idx)
    np.testing.assert_allclose(sim.numpy(), expected_sim, atol=1e-5)
    assert idx[2, 0].item() == 11


def test_knn_k_limits():
    feats = torch.tensor(_features(6, 3), dtype=torch.float32)
    idx, _ = knn(feats, k=5)  # N − 1 neighbours is the most a self-search can give
    assert sorted(idx[0].tolist()) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        knn(feats, k=6)
    # with separate queries the whole database may be returned, but not more
    idx, _ = knn(feats, k=6, queries=feats[:2])
    assert sorted(idx[0].tolist()) == list(range(6))
    with pytest.raises(ValueError):
        knn(feats, k=7, queries=feats[:2])


def test_neighbor_accuracy_hand_example():
    labels = torch.tensor([0, 0, 1, 1])
    neighbors = torch.tensor([
        [1, 2],  # anchor 0 (label 0): 1 ok, 2 wrong
        [0, 3],  # anchor 1 (label 0): 0 ok, 3 wrong
        [3, 1],  # anchor 2 (label 1): 3 ok, 1 wrong
        [2, 0],  # anchor 3 (label 1): 2 ok, 0 wrong
    ])
    # 4 correct pairs out of 8
    assert neighbor_accuracy(neighbors, labels) == pytest.approx(4 / 8)
    neighbors[3] = torch.tensor([2, 2])  # anchor 3 now has 2 correct: 5 of 8
    assert neighbor_accuracy(neighbors, labels) == pytest.approx(5 / 8)
