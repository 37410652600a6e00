"""Evaluate a run on its test split: cluster metrics for each finished clustering step, the
neighbour accuracy of mining, and stage timings, written to RUN/metrics.json."""

from __future__ import annotations

import numpy as np
import torch

from scan.checkpoint import RunDir, save_json
from scan.config import RunConfig
from scan.console import echo
from scan.data.sources import ImageSplits, load_source
from scan.data.stream import Images
from scan.kestimate import read_estimate
from scan.knn import neighbor_accuracy
from scan.metrics import cluster_diagnostics, cluster_metrics, hungarian_match
from scan.predict import ClusterModel
from scan.rundir import check_data
from scan.stages.artifacts import (final_reason, final_step, load_exported_model, load_neighbors, read_model_card,
                                   set_cluster_names)

STEPS = ("cluster", "selflabel")
TABLE_KEYS = ("acc", "nmi", "ari", "ami", "top5", "acc_majority")
DIAGNOSTIC_KEYS = ("confidence", "empty_clusters", "smallest_share", "largest_share")


def predict_probs(run: RunDir, step: str, cfg: RunConfig, images: Images, device: torch.device) -> np.ndarray:
    """Cluster probabilities N×K of `step`'s exported model (its selected head) on uint8 images."""
    return ClusterModel(*load_exported_model(run.stage(step)), device).probs(images, cfg.mine.batch_size).numpy()


def num_classes(data: ImageSplits) -> int:
    if data.classes is not None:
        return len(data.classes)
    return int(max(data.train_labels.max(), data.test_labels.max())) + 1


def matched_names(pred: np.ndarray, target: np.ndarray, num_clusters: int, data: ImageSplits) -> list[str | None]:
    """The class name each cluster is matched to by the Hungarian match of `pred` (N cluster
    ids) to `target` (N labels); None for clusters left unmatched (K > classes). Classes without
    names are named by their label."""
    classes = data.classes or [str(c) for c in range(num_classes(data))]
    return [classes[c] if c >= 0 else None for c in hungarian_match(pred, target, num_clusters, len(classes))]


def evaluate_run(run: RunDir, cfg: RunConfig, device: torch.device, data: ImageSplits | None = None) -> dict:
    """Compute and write RUN/metrics.json; print the metrics table. Labels are read here only."""
    data = data if data is not None else load_source(cfg.data, cfg.runtime.stream)
    check_data(run, data)
    labelled = data.test_labels is not None
    metrics: dict = {}
    if run.done("mine").is_file() and data.train_labels is not None:
        metrics["mine"] = {"neighbor_accuracy": neighbor_accuracy(load_neighbors(run)[0], data.train_labels)}
    for step in STEPS:
        if not (run.done(step).is_file() and (run.stage(step) / "model.json").is_file()):  # or self-labelling skipped
            continue
        probs = predict_probs(run, step, cfg, data.test, device)
        metrics[step] = cluster_diagnostics(probs)
        if labelled:
            metrics[step].update(cluster_metrics(probs, data.test_labels.numpy(), num_classes(data)))
            # The matched class names travel with the exported model, for `scan predict`.
            set_cluster_names(run, step, matched_names(probs.argmax(1), data.test_labels.numpy(), probs.shape[1], data))
        if step == "cluster":
            metrics[step]["head"] = read_model_card(run.stage(step))["head"]
    if any(step in metrics for step in STEPS):
        metrics["final"] = {"step": final_step(run)}
        if final_reason(run) is not None:
            metrics["final"]["reason"] = final_reason(run)
    estimate = read_estimate(run)
    if estimate is not None:  # --clusters auto: the chosen K and the curves it was chosen from
        metrics["clusters_auto"] = estimate
    metrics["seconds"] = run.stage_seconds()
    save_json(metrics, run.metrics)
    echo(format_table(metrics))
    return metrics


def format_table(metrics: dict) -> str:
    """The metrics of each step as a fixed-width table (test split)."""
    keys = [k for k in TABLE_KEYS if any(k in metrics.get(s, {}) for s in STEPS)] or list(DIAGNOSTIC_KEYS)
    lines = ["test metrics" + ("" if keys[0] in TABLE_KEYS else " (no labels: label-free diagnostics)")]
    if keys:
        lines.append(f"{'step':<10}" + "".join(f"{k:>14}" for k in keys))
        for step in STEPS:
            if step in metrics:
                lines.append(f"{step:<10}" + "".join(
                    f"{metrics[step][k]:>14.4f}" if k in metrics[step] else f"{'-':>14}" for k in keys))
    if "mine" in metrics:
        lines.append(f"neighbour accuracy (train, top-k): {metrics['mine']['neighbor_accuracy']:.4f}")
    if "final" in metrics:
        final = metrics["final"]
        lines.append(f"final model: {final['step']}" + (f" ({final['reason']})" if "reason" in final else ""))
    seconds = metrics.get("seconds", {})
    if seconds:
        lines.append("seconds: " + ", ".join(f"{s} {t:.1f}" for s, t in seconds.items()))
    return "\n".join(lines)
