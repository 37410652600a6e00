"""Clustering metrics on hand-made labellings whose best matching is computable by hand."""

from __future__ import annotations

import numpy as np
import pytest

from scan.metrics import cluster_metrics, contingency, hungarian_match


def _one_hot(pred: list[int], k: int) -> np.ndarray:
    """Soft-ish probabilities whose argmax is `pred`."""
    probs = np.full((len(pred), k), 0.1 / max(k - 1, 1))
    probs[np.arange(len(pred)), pred] = 0.9
    return probs


def test_permuted_labelling_is_perfect():
    target = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    perm = np.array([2, 3, 1, 0])
    m = cluster_metrics(_one_hot(list(perm[target]), 4), target)
    assert m["acc"] == pytest.approx(1.0)
    assert m["nmi"] == pytest.approx(1.0)
    assert m["ari"] == pytest.approx(1.0)
    assert m["ami"] == pytest.approx(1.0)
    assert m["top5"] == pytest.approx(1.0)
    assert "acc_majority" not in m


def test_hand_confusion_acc_is_0_7():
    target = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    pred = [1, 1, 1, 0, 2, 2, 0, 0, 0, 1]
    # contingency (cluster × class): c0 = (1, 1, 2), c1 = (3, 0, 1), c2 = (0, 2, 0)
    # best one-to-one: c1->0 (3) + c2->1 (2) + c0->2 (2) = 7 of 10
    counts = contingency(np.array(pred), np.array(target), 3, 3)
    np.testing.assert_array_equal(counts, [[1, 1, 2], [3, 0, 1], [0, 2, 0]])
    np.testing.assert_array_equal(hungarian_match(np.array(pred), np.array(target), 3, 3), [2, 0, 1])
    m = cluster_metrics(_one_hot(pred, 3), np.array(target))
    assert m["acc"] == pytest.approx(0.7)
    assert 0 < m["nmi"] < 1 and m["ari"] < 1
    assert "acc_majority" not in m


def test_top5_with_at_most_five_clusters_is_one():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=50)
    probs = rng.dirichlet(np.ones(4), size=50)
    m = cluster_metrics(probs, target, num_classes=4)
    assert m["top5"] == pytest.approx(1.0)
    assert m["acc"] < 1.0


def test_top5_counts_hits_among_five_best_clusters():
    # K = 6 = classes. Samples 0..5: cluster i clearly, target i (identity matching, 6 correct).
    probs = np.full((8, 6), 0.1)
    probs[np.arange(6), np.arange(6)] = 0.5
    # sample 6: target 0, argmax cluster 1, cluster 0 ranked sixth -> wrong and a top-5 miss
    probs[6] = [0.0, 0.6, 0.5, 0.4, 0.3, 0.2]
    # sample 7: target 2, argmax cluster 1, cluster 2 ranked second -> wrong but a top-5 hit
    probs[7] = [0.1, 0.5, 0.4, 0.0, 0.0, 0.0]
    target = np.array([0, 1, 2, 3, 4, 5, 0, 2])
    m = cluster_metrics(probs, target)
    assert m["acc"] == pytest.approx(6 / 8)
    assert m["top5"] == pytest.approx(7 / 8)


def test_over_clustering_majority_and_unmatched_clusters():
    # 2 classes, K = 4 clusters:
    #   c0: classes (0, 0, 0)   c1: (0, 0, 1)   c2: (1, 1)   c3: (1, 1)
    target = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    pred = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    m = cluster_metrics(_one_hot(pred, 4), target)
    # Hungarian: only two clusters get a class: c0->0 (3) + c2 or c3 ->1 (2) = 5; the others are wrong
    assert m["acc"] == pytest.approx(0.5)
    # majority: c0->0 (3), c1->0 (2), c2->1 (2), c3->1 (2) = 9 of 10
    assert m["acc_majority"] == pytest.approx(0.9)
    mapping = hungarian_match(np.array(pred), target, 4, 2)
    assert (mapping == -1).sum() == 2


def test_under_clustering_has_majority_acc():
    # 3 classes, K = 2: c0 = classes (0, 0, 0, 1), c1 = (0, 0, 2)
    target = np.array([0, 0, 0, 1, 0, 0, 2])
    pred = [0, 0, 0, 0, 1, 1, 1]
    m = cluster_metrics(_one_hot(pred, 2), target)
    # Hungarian: c0->0 (3) + c1->2 (1) = 4 beats c0->1 (1) + c1->0 (2) = 3
    assert m["acc"] == pytest.approx(4 / 7)
    # majority: both clusters -> class 0: 3 + 2 = 5
    assert m["acc_majority"] == pytest.approx(5 / 7)


def test_cluster_diagnostics_need_no_labels():
    from scan.metrics import cluster_diagnostics

    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.7, 0.3, 0.0]])
    d = cluster_diagnostics(probs)
    assert d == {"confidence": pytest.approx((0.9 + 0.6 + 0.8 + 0.7) / 4), "empty_clusters": 1,
                 "smallest_share": 0.0, "largest_share": 0.75}
