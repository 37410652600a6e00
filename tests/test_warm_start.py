"""Warm-started SCAN heads: trained on fixed features and ranked by the validation loss (the
cluster stage's use of them is tested in test_pipeline.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import feature_blobs

from scan.config import build_config
from scan.errors import ScanError
from scan.knn import knn
from scan.losses import validation_scan_loss
from scan.metrics import cluster_metrics
from scan.stages.warm_start import warm_heads


def test_warm_heads_come_best_first_and_the_best_finds_the_groups():
    torch.manual_seed(0)
    features, labels = feature_blobs()
    neighbors, _ = knn(features, 10)
    heads = warm_heads(features, neighbors, num_clusters=4, candidates=6, keep=6, entropy_weight=5.0,
                       select_entropy_weight=1.0)
    assert len(heads) == 6
    assert all(h.weight.shape == (4, 16) and h.bias.shape == (4,) for h in heads)
    # the reported loss is the validation loss of the returned weights, and they come best first
    losses = [validation_scan_loss((features @ h.weight.T + h.bias).softmax(1), neighbors).total.item() for h in heads]
    assert losses == pytest.approx([h.val_loss for h in heads], abs=1e-5)
    assert losses == sorted(losses)
    best = (features @ heads[0].weight.T + heads[0].bias).softmax(1)
    assert cluster_metrics(best.numpy(), labels.numpy())["acc"] == 1.0
    assert len(warm_heads(features, neighbors, 4, candidates=6, keep=2, entropy_weight=5.0, select_entropy_weight=1.0)) == 2


def test_warm_start_needs_at_least_num_heads_candidates():
    assert build_config("digits", overrides=["cluster.warm_start_heads=5"]).cluster.warm_start_heads == 5
    with pytest.raises(ScanError, match=r"cluster.warm_start_heads must be 0 \(off\) or at least cluster.num_heads \(5\), got 3"):
        build_config("digits", overrides=["cluster.warm_start_heads=3"])
