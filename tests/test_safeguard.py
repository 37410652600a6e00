"""The self-label safeguard: label-free checks before and after self-labelling, and a run that
keeps the SCAN model says so in metrics.json and is what `scan.load` returns."""

from __future__ import annotations

import json
import math

import pytest
import torch

import scan
from scan.stages.safeguard import assignment_balance, compare_balance, confident_set


def one_hot_probs(clusters: list[int], k: int, confidence: float) -> torch.Tensor:
    """N×K probabilities: `confidence` on each row's cluster, the rest spread evenly."""
    probs = torch.full((len(clusters), k), (1 - confidence) / (k - 1))
    probs[torch.arange(len(clusters)), torch.tensor(clusters)] = confidence
    return probs


def test_a_confident_set_of_one_class_is_not_enough():
    # 40 images confident in cluster 0, 60 spread over clusters 1-3 without confidence.
    probs = torch.cat([one_hot_probs([0] * 40, 4, 0.999), one_hot_probs([1, 2, 3] * 20, 4, 0.5)])
    judged = confident_set(probs, threshold=0.99, min_share=0.1)
    assert judged.share == pytest.approx(0.4) and judged.clusters == 1
    assert not judged.enough and "3 of 4 clusters have no confident image" in judged.reason


def test_too_few_confident_images_are_not_enough_and_zero_turns_the_check_off():
    probs = torch.cat([one_hot_probs([0, 1, 2, 3], 4, 0.999), one_hot_probs([0, 1, 2, 3] * 24, 4, 0.9)])
    judged = confident_set(probs, threshold=0.99, min_share=0.1)
    assert judged.share == pytest.approx(0.04) and judged.clusters == 4
    assert not judged.enough and "only 4.0%" in judged.reason
    assert confident_set(probs, threshold=0.99, min_share=0.0).enough
    assert confident_set(one_hot_probs([0, 1, 2, 3] * 5, 4, 0.999), 0.99, 0.1).enough


def test_balance_is_the_normalised_entropy_of_the_cluster_sizes():
    assert assignment_balance(one_hot_probs([0, 1, 2, 3] * 5, 4, 0.9)) == pytest.approx(1.0)
    assert assignment_balance(one_hot_probs([2] * 8, 4, 0.9)) == pytest.approx(0.0)
    half = assignment_balance(one_hot_probs([0, 1], 4, 0.9))  # two of four clusters used equally
    assert half == pytest.approx(math.log(2) / math.log(4))


def test_a_model_that_unbalances_the_clusters_does_not_replace_the_scan_model():
    assert compare_balance(0.98, 0.95, max_drop=0.05) is None
    reason = compare_balance(0.98, 0.80, max_drop=0.05)
    assert reason is not None and "0.980 -> 0.800" in reason


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
