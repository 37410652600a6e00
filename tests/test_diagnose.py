"""Label-free doubts about clusters: neighbour exchange between clusters (one class split in two),
low confidence and the spread of neighbour agreement, on hand-made assignments."""

from __future__ import annotations

import numpy as np

from scan.diagnose import cluster_doubts, neighbor_agreement, neighbor_exchange, split_pairs, split_warning


def test_neighbour_exchange_counts_where_each_clusters_neighbours_land():
    clusters = np.array([0, 0, 1, 1])
    # image 0's neighbours: 1 (cluster 0), 2 (cluster 1); image 1's: 0, 0; images 2, 3: each other twice
    neighbors = np.array([[1, 2], [0, 0], [3, 3], [2, 2]])
    exchange = neighbor_exchange(clusters, neighbors, 3)
    np.testing.assert_allclose(exchange, [[0.75, 0.25, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(neighbor_agreement(clusters, neighbors), [0.5, 1, 1, 1])


def test_a_class_split_in_two_is_a_pair_and_well_separated_clusters_are_not():
    # Clusters 0 and 1 are one class: half of each one's neighbours are in the other.
    exchange = np.array([[0.5, 0.5, 0.0], [0.4, 0.6, 0.0], [0.02, 0.0, 0.98]])
    pairs = split_pairs(exchange, threshold=0.15)
    assert [(p.a, p.b) for p in pairs] == [(0, 1)] and pairs[0].share == 0.5
    assert split_pairs(np.eye(3) * 0.97 + 0.01, threshold=0.15) == []
    assert "cluster.restarts=3" in split_warning(pairs) and "0+1 (50%)" in split_warning(pairs)
    assert split_warning([]) is None


def test_cluster_doubts_name_the_reasons():
    clusters = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    confidence = np.array([0.99, 0.99, 0.99, 0.99, 0.5, 0.6, 0.99, 0.99])
    # cluster 0 agrees fully except image 3 (no agreement), clusters 1 and 2 swap neighbours
    neighbors = np.array([[1, 2], [0, 2], [0, 1], [4, 6], [6, 7], [7, 6], [4, 5], [5, 4]])
    doubts = cluster_doubts(clusters, confidence, 4, neighbors)
    np.testing.assert_allclose(doubts.mean_confidence[:3], [0.99, 0.55, 0.99])
    assert np.isnan(doubts.mean_confidence[3])  # empty
    np.testing.assert_allclose(doubts.agreement_mean[:3], [0.75, 0, 0])
    assert any("low mean confidence 0.55" in r for r in doubts.reasons[1])
    assert any("neighbour agreement varies" in r for r in doubts.reasons[0])
    assert [(p.a, p.b) for p in doubts.pairs] == [(1, 2)]
    assert any("cluster 2" in r for r in doubts.reasons[1]) and any("cluster 1" in r for r in doubts.reasons[2])
    assert cluster_doubts(clusters, confidence, 4, None).pairs == []
