"""Label-free checks that decide whether self-labelling may replace the SCAN model.

Before: self-labelling trains only on images whose weak-view confidence passes the threshold; with
too few of them, or with clusters that have none, it fits a small, skewed set. After: a model whose
train-split assignments are clearly less balanced than the SCAN model's has let some clusters
swallow others (the collapse users of the original reported); the SCAN model then stays final.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConfidentSet:
    """share: fraction of images above the threshold; clusters: clusters with at least one of
    them; enough: whether self-labelling may start; reason: why not, else ''."""

    share: float
    clusters: int
    enough: bool
    reason: str


def confident_set(probs: torch.Tensor, threshold: float, min_share: float) -> ConfidentSet:
    """Judge the confident set of probs N×K (softmax of the SCAN model on weak views): enough when
    at least `min_share` of the images pass `threshold` and every cluster has one of them;
    min_share = 0 turns the check off."""
    confidence, cluster = probs.max(1)
    mask = confidence > threshold
    share = float(mask.float().mean())
    present = int(torch.unique(cluster[mask]).numel())
    k = probs.shape[1]
    if min_share == 0:
        return ConfidentSet(share, present, True, "")
    if share < min_share:
        return ConfidentSet(share, present, False, f"only {share:.1%} of the train images pass the confidence "
                                                   f"threshold {threshold} (selflabel.min_confident={min_share})")
    if present < k:
        return ConfidentSet(share, present, False, f"{k - present} of {k} clusters have no confident image, so "
                                                   "self-labelling could not keep them")
    return ConfidentSet(share, present, True, "")


def assignment_balance(probs: torch.Tensor) -> float:
    """Entropy of the hard cluster sizes of probs N×K, over its maximum ln K: 1 for equal sizes,
    0 when every image is in one cluster."""
    k = probs.shape[1]
    sizes = torch.bincount(probs.argmax(1), minlength=k).double()
    p = sizes / sizes.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return entropy / math.log(k)


def compare_balance(before: float, after: float, max_drop: float) -> str | None:
    """Why the model after self-labelling must not replace the one before (balance `after` lower
    than `before` by more than `max_drop`), or None when it may."""
    if before - after > max_drop:
        return (f"self-labelling unbalanced the clusters (normalised entropy of the cluster sizes {before:.3f} -> "
                f"{after:.3f}, more than selflabel.max_balance_drop={max_drop} lower)")
    return None
