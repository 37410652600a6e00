"""--clusters auto: the stability criterion on a hand-made curve, and the estimate on features
with a known number of groups."""

from __future__ import annotations

import torch
from conftest import feature_blobs

from scan.kestimate import choose_k, estimate_clusters, stability
from scan.knn import knn


def test_choose_k_takes_the_smallest_k_on_the_plateau():
    ks = [2, 3, 4, 5, 6]
    assert choose_k(ks, [0.5, 0.95, 1.0, 0.9, 0.97], tolerance=0.1) == 3  # 0.95 >= 0.9·1.0
    assert choose_k(ks, [0.5, 0.85, 1.0, 0.9, 0.97], tolerance=0.1) == 4
    assert choose_k(ks, [0.5, 0.85, 1.0, 0.9, 0.97], tolerance=0.0) == 4


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
    assert estimate.to_dict()["k"] == 4 and "smallest K" in estimate.to_dict()["criterion"]


def test_clusters_auto_and_its_range_are_validated():
    import pytest

    from scan.config import build_config
    from scan.errors import ScanError

    assert build_config("digits", clusters="auto").clusters == "auto"
    with pytest.raises(ScanError, match="--clusters must be at least 2 \\(or auto\\), got 'many'"):
        build_config("digits", clusters="many")
    with pytest.raises(ScanError, match="cluster.auto_range must be \\[min, max\\] with 2 <= min <= max"):
        build_config("digits", clusters="auto", overrides=["cluster.auto_range=[1,5]"])
