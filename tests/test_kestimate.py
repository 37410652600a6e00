"""--clusters auto: the stability criterion on a hand-made curve, and the estimate on features
with a known number of groups."""

from __future__ import annotations

import pytest
import torch
from conftest import feature_blobs

from scan.kestimate import choose_k, estimate_clusters, smooth, stability
from scan.knn import knn


def test_smooth_averages_each_value_with_its_neighbours():
    assert smooth([0.0, 3.0, 0.0, 3.0]) == pytest.approx([1.0, 1.0, 2.0, 2.0])  # an end counts twice


def test_choose_k_takes_the_start_of_the_smoothed_plateau():
    ks = [2, 3, 4, 5, 6, 7]
    curve = [0.5, 0.6, 0.85, 0.9, 0.9, 0.9]  # smoothed: 0.533, 0.65, 0.783, 0.883, 0.9, 0.9
    assert choose_k(ks, curve, tolerance=0.05) == 5  # bar 0.855; K = 4 alone (0.85) is below it
    assert choose_k(ks, curve, tolerance=0.1) == 4  # bar 0.81: K = 4 is the step back (0.85)


def test_choose_k_passes_over_an_isolated_spike_at_small_k():
    ks = [2, 3, 4, 5, 6, 7, 8]
    curve = [0.5, 0.8, 0.5, 0.5, 0.7, 0.72, 0.71]  # the raw best is K = 3, alone
    # smoothed: 0.6, 0.6, 0.6, 0.567, 0.64, 0.71, 0.713; bar 0.678 from K = 7; K = 6 (0.70) clears it
    assert choose_k(ks, curve) == 6


def test_choose_k_finds_a_sharp_plateau_where_it_starts():
    ks = [2, 3, 4, 5, 6, 7]
    curve = [0.4, 0.6, 1.0, 0.96, 0.87, 0.71]  # smoothed: 0.467, 0.667, 0.853, 0.943, 0.847, 0.763
    assert choose_k(ks, curve) == 4  # the smoothed plateau starts at 5; K = 4's own 1.0 clears the bar


def test_stability_is_one_for_identical_partitions_up_to_renaming():
    a = torch.tensor([[0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1], [1, 1, 2, 2, 0, 0]])
    assert abs(stability(a) - 1.0) < 1e-9
    b = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1]])
    assert stability(b) < 0.0  # crossing partitions agree less than chance


def test_the_estimate_finds_four_well_separated_groups():
    torch.manual_seed(0)
    features, _ = feature_blobs()
    neighbors, _ = knn(features, 10)
    estimate = estimate_clusters(features, neighbors, (2, 7), heads=6, steps=300)
    assert estimate.k == 4
    assert estimate.ks == [2, 3, 4, 5, 6, 7] and len(estimate.stability) == 6
    assert estimate.to_dict()["k"] == 4 and "plateau" in estimate.to_dict()["criterion"]


def test_clusters_auto_and_its_range_are_validated():
    from scan.config import build_config
    from scan.errors import ScanError

    assert build_config("digits", clusters="auto").clusters == "auto"
    with pytest.raises(ScanError, match="--clusters must be at least 2 \\(or auto\\), got 'many'"):
        build_config("digits", clusters="many")
    with pytest.raises(ScanError, match="cluster.auto_range must be \\[min, max\\] with 2 <= min <= max"):
        build_config("digits", clusters="auto", overrides=["cluster.auto_range=[1,5]"])
