"""The self-label safeguard: label-free checks before and after self-labelling, and a run that
keeps the SCAN model says so in metrics.json and is what `scan.load` returns."""

from __future__ import annotations

import json
import math

import pytest
import torch

import scan
from scan.losses import pseudo_labels
from scan.stages.safeguard import (agreement_change, assignment_balance, cluster_thresholds, compare_agreement,
                                   compare_balance, confident_set)


def one_hot_probs(clusters: list[int], k: int, confidence: float) -> torch.Tensor:
    """N×K probabilities: `confidence` on each row's cluster, the rest spread evenly."""
    probs = torch.full((len(clusters), k), (1 - confidence) / (k - 1))
    probs[torch.arange(len(clusters)), torch.tensor(clusters)] = confidence
    return probs


def test_a_confident_set_of_one_class_is_not_enough():
    # 40 images confident in cluster 0, 60 spread over clusters 1-3 without confidence.
    probs = torch.cat([one_hot_probs([0] * 40, 4, 0.999), one_hot_probs([1, 2, 3] * 20, 4, 0.5)])
    judged = confident_set(probs, cluster_thresholds(probs, 0.99, quota=0), min_share=0.1)
    assert judged.share == pytest.approx(0.4) and judged.clusters == 1
    assert not judged.enough and "3 of 4 clusters have no confident image" in judged.reason


def test_too_few_confident_images_are_not_enough_and_zero_turns_the_check_off():
    probs = torch.cat([one_hot_probs([0, 1, 2, 3], 4, 0.999), one_hot_probs([0, 1, 2, 3] * 24, 4, 0.9)])
    global_threshold = torch.full((4,), 0.99)
    judged = confident_set(probs, global_threshold, min_share=0.1)
    assert judged.share == pytest.approx(0.04) and judged.clusters == 4
    assert not judged.enough and "only 4.0%" in judged.reason
    assert confident_set(probs, global_threshold, min_share=0.0).enough
    assert confident_set(one_hot_probs([0, 1, 2, 3] * 5, 4, 0.999), global_threshold, 0.1).enough


def test_a_cluster_quota_lowers_the_threshold_only_where_too_few_images_pass():
    # Cluster 0: 40 images at 0.999 (all pass 0.99). Cluster 1: confidences 0.50, 0.55, ..., 0.95
    # (10 images, none pass); the top 20 % are 0.90 and 0.95, so its threshold falls just below the
    # 80th percentile 0.86 (linear interpolation between 0.85 and 0.90 at 0.8·9 = 7.2).
    # Clusters 2 and 3 hold no image and keep the global threshold.
    confidences = [0.50 + 0.05 * i for i in range(10)]
    probs = torch.cat([one_hot_probs([0] * 40, 4, 0.999),
                       torch.stack([one_hot_probs([1], 4, c)[0] for c in confidences])])
    thresholds = cluster_thresholds(probs, 0.99, quota=0.2)
    assert thresholds.tolist() == pytest.approx([0.99, 0.86, 0.99, 0.99])
    assert cluster_thresholds(probs, 0.99, quota=0).tolist() == pytest.approx([0.99] * 4)
    judged = confident_set(probs, thresholds, min_share=0.1)
    assert judged.clusters == 2 and judged.share == pytest.approx(42 / 50)
    # The step's pseudo-labels use the cluster's own threshold: 0.90 and 0.95 pass in cluster 1.
    labels = pseudo_labels(probs.log(), thresholds, class_balance=False)
    assert labels.count == 42 and labels.mask[40:].tolist() == [False] * 8 + [True] * 2


def test_balance_is_the_normalised_entropy_of_the_cluster_sizes():
    assert assignment_balance(one_hot_probs([0, 1, 2, 3] * 5, 4, 0.9)) == pytest.approx(1.0)
    assert assignment_balance(one_hot_probs([2] * 8, 4, 0.9)) == pytest.approx(0.0)
    half = assignment_balance(one_hot_probs([0, 1], 4, 0.9))  # two of four clusters used equally
    assert half == pytest.approx(math.log(2) / math.log(4))


def test_a_model_that_unbalances_the_clusters_does_not_replace_the_scan_model():
    assert compare_balance(0.98, 0.95, max_drop=0.05) is None
    reason = compare_balance(0.98, 0.80, max_drop=0.05)
    assert reason is not None and "0.980 -> 0.800" in reason


def test_a_model_that_agrees_less_with_the_mined_neighbours_does_not_replace_the_scan_model():
    neighbors = torch.tensor([[1], [0], [3], [2]])  # 0 <-> 1 and 2 <-> 3
    before = one_hot_probs([0, 0, 1, 1], 2, 0.9)    # both pairs in one cluster: 4 of 4 agree
    after = one_hot_probs([0, 1, 1, 1], 2, 0.9)     # image 1 moved: 0-1 and 1-0 disagree
    change = agreement_change(before, after, neighbors)
    assert (change.before, change.after, change.images) == (pytest.approx(1.0), pytest.approx(0.5), 4)
    # per-image differences [-1, -1, 0, 0]: sample std sqrt(1/3), over sqrt(4) images
    assert change.stderr == pytest.approx(math.sqrt(1 / 3) / 2)
    reason = compare_agreement(change, max_drop=0.0, z=0.0)
    assert reason is not None and "1.0000 -> 0.5000" in reason
    assert compare_agreement(agreement_change(after, before, neighbors), max_drop=0.0, z=0.0) is None
    assert compare_agreement(change, max_drop=1.0, z=1.645) is None


def pairs_agreeing(n_pairs: int, moved: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """probs of 2·n_pairs images in mutual-neighbour pairs (2i, 2i+1), all pairs in one cluster but
    those whose first image is in `moved`, and the neighbours N×1."""
    clusters = torch.zeros(2 * n_pairs, dtype=torch.long)
    clusters[[2 * p for p in moved]] = 1
    neighbors = torch.arange(2 * n_pairs).view(-1, 2).flip(1).reshape(-1, 1)
    return one_hot_probs(clusters.tolist(), 2, 0.9), neighbors


def test_a_gain_within_the_noise_of_retraining_does_not_replace_the_scan_model():
    # 1,000 pairs; self-labelling splits 10 pairs and joins 12 others: a net gain of 4 of 2,000
    # images, with 44 images changed either way, is no evidence.
    before, neighbors = pairs_agreeing(1000, moved=list(range(12)))
    after, _ = pairs_agreeing(1000, moved=list(range(100, 110)))
    change = agreement_change(before, after, neighbors)
    assert change.gain == pytest.approx(4 / 2000)
    diffs = torch.tensor([1.0] * 24 + [-1.0] * 20 + [0.0] * 1956)
    assert change.stderr == pytest.approx(float(diffs.std() / math.sqrt(2000)), rel=1e-6)
    assert change.gain < 1.645 * change.stderr
    reason = compare_agreement(change, max_drop=0.0, z=1.645)
    assert reason is not None and "standard error" in reason and "selflabel.agreement_z=1.645" in reason
    assert compare_agreement(change, max_drop=0.0, z=0.0) is None  # the rule without the margin keeps it
    # joining the 12 split pairs and splitting none is a clear gain (z about 4.9)
    clear, _ = pairs_agreeing(1000, moved=[])
    assert compare_agreement(agreement_change(before, clear, neighbors), max_drop=0.0, z=1.645) is None


TINY = ["pretext.epochs=2", "cluster.epochs=2", "selflabel.epochs=1", "cluster.num_heads=2", "device=cpu"]


def test_a_run_whose_confident_set_is_too_small_keeps_the_scan_model(tmp_path):
    out = tmp_path / "run"
    metrics = scan.run("digits", out=out, overrides=[*TINY, "selflabel.min_confident=1.0"])
    assert metrics["final"]["step"] == "cluster"
    assert "selflabel.min_confident=1.0" in metrics["final"]["reason"]
    assert "selflabel" not in metrics  # no self-label model was trained
    done = json.loads((out / "selflabel" / "done.json").read_text())
    assert done["summary"]["final"] == "cluster"
    assert scan.load(out).card == json.loads((out / "cluster" / "model.json").read_text())
    assert "final model: cluster" in (out / "log.txt").read_text()
    from scan.report import write_report

    page = write_report(out, device="cpu").read_text()
    assert "Final model: <b>cluster</b>: only" in page
