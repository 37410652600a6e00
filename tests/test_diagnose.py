"""Label-free doubts about clusters: neighbour exchange between clusters (one class split in two),
low confidence and the spread of neighbour agreement, on hand-made assignments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scan.checkpoint import RunDir
from scan.config import build_config
from scan.data.sources import load_source
from scan.diagnose import (CALIBRATION_DIGESTS, best_validation_loss, cluster_doubts, data_digest, neighbor_agreement,
                           neighbor_exchange, poor_solution_warning, split_pairs, split_warning)

MNIST_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist.npz"


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


def test_poor_solution_warning_uses_each_presets_threshold_on_its_own_data_only():
    digits = build_config("digits")
    assert poor_solution_warning(digits, -2.234) is None  # the closest good run (seed 3, one thread)
    line = poor_solution_warning(digits, -2.209)  # the 1s-and-8s outcome
    assert "-2.209 is above -2.227" in line and "cluster.restarts=3" in line
    assert "more cluster.restarts" in poor_solution_warning(build_config("digits", overrides=["cluster.restarts=3"]), -2.22)
    assert poor_solution_warning(build_config("digits", clusters=20), -2.0) is None  # another K
    mnist = build_config("mnist")
    assert poor_solution_warning(mnist, -2.233) is None  # the closest good MNIST step seen
    line = poor_solution_warning(mnist, -2.209)  # two digits mixed across two clusters
    assert "-2.209 is above -2.222" in line and "cluster.restarts=3" in line
    assert "more cluster.restarts" in poor_solution_warning(build_config("mnist", overrides=["cluster.restarts=3"]), -2.209)
    mnist_file = build_config("mnist", overrides=["data.source=npz", "data.path=x.npz"])
    assert poor_solution_warning(mnist_file, -2.209) is None  # a file of unknown images
    assert poor_solution_warning(mnist_file, -2.209, "0" * 32) is None
    calibrated = next(iter(CALIBRATION_DIGESTS["mnist"]))
    assert "-2.209 is above -2.222" in poor_solution_warning(mnist_file, -2.209, calibrated)
    assert poor_solution_warning(build_config("digits", overrides=["data.source=npz", "data.path=x.npz"]), -2.209,
                                 calibrated) is None  # MNIST's images calibrate only mnist's threshold
    assert poor_solution_warning(build_config("cifar10_cpu"), -1.0) is None  # no threshold known
    assert poor_solution_warning(digits, None) is None


def test_best_validation_loss_from_done_json_else_history(tmp_path):
    run = RunDir(tmp_path)
    assert best_validation_loss(run) is None
    run.stage("cluster").mkdir()
    run.history("cluster").write_text('{"val_loss": [-1.5, -2.1]}\nbroken\n{"val_loss": -1.9}\n')
    assert best_validation_loss(run) == -2.1
    run.done("cluster").write_text(json.dumps({"summary": {"best_loss": -2.2}}))
    assert best_validation_loss(run) == -2.2


def test_data_digest_reads_the_runs_data_record(tmp_path):
    run = RunDir(tmp_path)
    assert data_digest(run) is None
    run.data.write_text("{broken")
    assert data_digest(run) is None
    run.data.write_text(json.dumps({"train": 2, "test": 2, "digest": "ab"}))
    assert data_digest(run) == "ab"


@pytest.mark.skipif(not MNIST_NPZ.is_file(), reason="../shared/data/mnist.npz is not present")
def test_the_shared_mnist_file_is_the_data_mnists_threshold_was_calibrated_on():
    cfg = build_config("mnist", overrides=["data.source=npz", f"data.path={MNIST_NPZ}"])
    assert load_source(cfg.data).identity()["digest"] in CALIBRATION_DIGESTS["mnist"]
