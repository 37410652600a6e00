"""Clustering metrics against ground truth: Hungarian ACC, NMI, ARI, AMI, top-k ACC, and
many-to-one (majority) ACC for over- or under-clustering; and label-free diagnostics."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score


def contingency(pred: np.ndarray, target: np.ndarray, num_clusters: int, num_classes: int) -> np.ndarray:
    """counts[c, t]: how many samples in cluster c have class t. Shape num_clusters×num_classes."""
    counts = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(counts, (pred, target), 1)
    return counts


def hungarian_match(pred: np.ndarray, target: np.ndarray, num_clusters: int, num_classes: int) -> np.ndarray:
    """One-to-one cluster -> class map maximising matched samples (scipy's linear_sum_assignment).

    Returns mapping of length num_clusters; clusters left unmatched (when K > classes) map to −1.
    """
    counts = contingency(pred, target, num_clusters, num_classes)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.full(num_clusters, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def cluster_metrics(probs: np.ndarray, target: np.ndarray, num_classes: int | None = None) -> dict[str, float]:
    """All metrics of a soft clustering against labels.

    probs: N×K cluster probabilities; target: N int labels. Keys: acc (Hungarian), nmi, ari, ami,
    top5 (target among the top-min(5, K) clusters mapped through the Hungarian match), and
    acc_majority (each cluster -> its majority class) when K differs from the number of classes.
    """
    num_clusters = probs.shape[1]
    num_classes = int(num_classes if num_classes is not None else target.max() + 1)
    pred = probs.argmax(1)
    mapping = hungarian_match(pred, target, num_clusters, num_classes)
    topk = np.argsort(-probs, axis=1)[:, : min(5, num_clusters)]
    metrics = {
        "acc": float((mapping[pred] == target).mean()),
        "nmi": float(normalized_mutual_info_score(target, pred)),
        "ari": float(adjusted_rand_score(target, pred)),
        "ami": float(adjusted_mutual_info_score(target, pred)),
        "top5": float((mapping[topk] == target[:, None]).any(1).mean()),
    }
    if num_clusters != num_classes:
        majority = contingency(pred, target, num_clusters, num_classes).argmax(1)
        metrics["acc_majority"] = float((majority[pred] == target).mean())
    return metrics


def cluster_diagnostics(probs: np.ndarray) -> dict:
    """Label-free facts about a soft clustering, probs N×K: mean confidence (max probability),
    the number of empty clusters, and the smallest and largest cluster as a share of N."""
    sizes = np.bincount(probs.argmax(1), minlength=probs.shape[1])
    return {
        "confidence": float(probs.max(1).mean()),
        "empty_clusters": int((sizes == 0).sum()),
        "smallest_share": float(sizes.min() / len(probs)),
        "largest_share": float(sizes.max() / len(probs)),
    }
