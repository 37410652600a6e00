"""The three losses of SCAN (formulas from the reference, §2): NT-Xent for SimCLR, the SCAN
clustering loss, and confidence-based cross-entropy for self-labelling."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from scan.distributed import LOCAL, Collectives

# The original clamps probabilities at 1e-8 inside the entropy (losses/losses.py EPS).
EPS = 1e-8
# PyTorch's BCELoss, which the original uses for the consistency term, clamps log at -100.
LOG_FLOOR = -100.0


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, dist: Collectives = LOCAL) -> torch.Tensor:
    """Symmetric NT-Xent (SimCLR): both views act as anchors.

    z1, z2: b×d L2-normalised features of two views of the same b images. Each of the 2b rows is
    contrasted against the other 2B−1 rows of the global batch (B = b·ranks: negatives come from
    every rank, gathered with gradients); its positive is the other view of its image.
    (The original code uses only view-1 anchors, B terms; this is the standard 2B-term form.)
    Returns a scalar: the mean over this rank's 2b anchors.
    """
    return multicrop_nt_xent(torch.stack([z1, z2]), temperature, dist)


def multicrop_nt_xent(z: torch.Tensor, temperature: float, dist: Collectives = LOCAL,
                      global_views: int = 2) -> torch.Tensor:
    """NT-Xent over V views of each image (multi-crop SimCLR; with V = 2, nt_xent).

    z: V×b×d L2-normalised features of V views of this rank's b images; the first `global_views`
    are full-size views, the rest small crops. Every view is an anchor, contrasted against every
    view of the global batch (gathered with gradients) but itself. Its positives are the other
    views of its image, except that two small crops are neither positives nor negatives of each
    other: they may show disjoint parts of the image (multi-crop compares small crops with the
    full views only: Caron et al., "Unsupervised learning of visual features by contrasting
    cluster assignments", NeurIPS 2020). Loss of an anchor: the mean over its positives of
    −log softmax; returns the mean over this rank's V·b anchors.
    """
    v, b, _ = z.shape
    z = z.float()
    contrast = torch.cat([dist.gather(view) for view in z])  # V·B×d, view-major
    n = contrast.shape[0] // v
    dev = z.device
    anchor_image = (dist.rank * b + torch.arange(b, device=dev)).repeat(v)
    anchor_view = torch.arange(v, device=dev).repeat_interleave(b)
    column_image = torch.arange(n, device=dev).repeat(v)
    column_view = torch.arange(v, device=dev).repeat_interleave(n)
    same_image = anchor_image[:, None] == column_image[None]
    itself = same_image & (anchor_view[:, None] == column_view[None])
    small_pair = same_image & (anchor_view[:, None] >= global_views) & (column_view[None] >= global_views)
    positive = same_image & ~itself & ~small_pair
    logits = (z.flatten(0, 1) @ contrast.T / temperature).masked_fill(itself | small_pair, float("-inf"))
    log_prob = logits.log_softmax(1).where(positive, 0.0)
    return (-log_prob.sum(1) / positive.sum(1)).mean()


def entropy_of(p: torch.Tensor) -> torch.Tensor:
    """H(p) of one distribution p (K), with p clamped at EPS inside the log as the original does."""
    p = p.clamp_min(EPS)
    return -(p * p.log()).sum()


def entropy_of_mean(probs: torch.Tensor) -> torch.Tensor:
    """H(mean_i p_i) for probs B×K: the entropy of the batch's average assignment."""
    return entropy_of(probs.mean(0))


class ScanLoss(NamedTuple):
    total: torch.Tensor
    consistency: torch.Tensor
    entropy: torch.Tensor


def scan_loss(anchor_logits: torch.Tensor, neighbor_logits: torch.Tensor, entropy_weight: float,
              dist: Collectives = LOCAL) -> ScanLoss:
    """SCAN loss of one head: −mean_i log⟨p_i, q_i⟩ − λ·H(mean_i p_i).

    anchor_logits, neighbor_logits: b×K logits of anchors and one neighbour each.
    log⟨p, q⟩ is computed as logsumexp(log p + log q), stable in low precision, floored at −100
    as BCE does. Gradients flow into both p and q. The entropy is that of the mean over the global
    batch (summed over ranks with gradients); the consistency is this rank's mean.
    Returns (total, consistency, entropy).
    """
    log_p = F.log_softmax(anchor_logits.float(), dim=1)
    log_q = F.log_softmax(neighbor_logits.float(), dim=1)
    log_sim = torch.logsumexp(log_p + log_q, dim=1).clamp_min(LOG_FLOOR)
    consistency = -log_sim.mean()
    mean = dist.sum(log_p.exp().sum(0)) / (anchor_logits.shape[0] * dist.world_size)
    entropy = entropy_of(mean)
    return ScanLoss(consistency - entropy_weight * entropy, consistency, entropy)


def validation_scan_loss(
    probs: torch.Tensor, neighbors: torch.Tensor, entropy_weight: float = 1.0, chunk: int = 8192
) -> ScanLoss:
    """Label-free SCAN loss over a whole split, used to select the best (model, head).

    probs: N×K softmax probabilities; neighbors: N×k int64 mined neighbour indices (self excluded).
    As in the original, the consistency averages −log⟨p_n, p_j⟩ over each sample's pairs with itself
    and its k neighbours. Memory is O(chunk·k·K), never N×N.
    """
    n = probs.shape[0]
    total_log = probs.new_zeros((), dtype=torch.float64)
    for start in range(0, n, chunk):
        p = probs[start:start + chunk].float()
        rows = torch.arange(start, start + p.shape[0], device=neighbors.device)[:, None]
        pairs = torch.cat([rows, neighbors[start:start + chunk]], dim=1)
        sim = (p[:, None, :] * probs[pairs].float()).sum(-1)
        total_log += sim.clamp_min(0).log().clamp_min(LOG_FLOOR).double().sum()
    consistency = (-total_log / (n * (neighbors.shape[1] + 1))).float()
    entropy = entropy_of_mean(probs.float())
    return ScanLoss(consistency - entropy_weight * entropy, consistency, entropy)


class PseudoLabels(NamedTuple):
    """Confident weak-view predictions of this rank's b samples.

    mask: bool b, the confident samples; target: int64 (mask.sum()), their pseudo-labels;
    weight: float K class weights (None without class balancing); count: confident samples in the
    global batch; weight_sum: the sum of their weights over the global batch.
    """

    mask: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor | None
    count: int
    weight_sum: float


def pseudo_labels(weak_logits: torch.Tensor, threshold: float | torch.Tensor, class_balance: bool,
                  dist: Collectives = LOCAL) -> PseudoLabels:
    """A sample is confident when max softmax(weak) > threshold (strictly, as the original); a
    threshold tensor of K gives each predicted class its own (safeguard.cluster_thresholds).
    With class_balance, each pseudo-class c present in the global batch gets weight n/n_c (n
    confident samples, n_c of them in c), so every present class contributes equally.
    weak_logits: b×K."""
    probs = weak_logits.detach().float().softmax(1)
    confidence, target = probs.max(1)
    mask = confidence > (threshold.to(probs.device)[target] if torch.is_tensor(threshold) else threshold)
    target = target[mask]
    counts = dist.sum_(torch.bincount(target, minlength=probs.shape[1]).float())
    n = counts.sum()
    weight = torch.where(counts > 0, n / counts.clamp_min(1), torch.ones_like(counts)) if class_balance else None
    weight_sum = (counts * weight).sum() if weight is not None else n
    return PseudoLabels(mask, target, weight, int(n.item()), float(weight_sum.item()))


def pseudo_label_ce(strong_logits: torch.Tensor, labels: PseudoLabels, world_size: int = 1) -> torch.Tensor:
    """Cross-entropy of strong views (b×K logits) against confident pseudo-labels, the weighted
    mean over the global batch: Σ w_y·CE / Σ w_y. Each rank returns world_size × its share of
    that sum, so the gradient averaged over ranks (as DistributedDataParallel does) is the global
    one; a rank without confident samples still returns a loss connected to its logits (zero)."""
    ce = F.cross_entropy(strong_logits[labels.mask].float(), labels.target, weight=labels.weight, reduction="sum")
    return ce * world_size / labels.weight_sum


class SelfLabelLoss(NamedTuple):
    loss: torch.Tensor | None
    confident: int


def confidence_ce(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float, class_balance: bool
) -> SelfLabelLoss:
    """Cross-entropy of strong views against confident weak-view pseudo-labels (one process).

    weak_logits, strong_logits: B×K. With class_balance every present pseudo-class contributes
    equally (PyTorch's weighted mean with weights n/n_c). loss is None when no sample is confident.
    """
    labels = pseudo_labels(weak_logits, threshold, class_balance)
    if labels.count == 0:
        return SelfLabelLoss(None, 0)
    return SelfLabelLoss(pseudo_label_ce(strong_logits, labels), labels.count)
