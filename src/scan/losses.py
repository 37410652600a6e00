"""The three losses of SCAN (formulas from the reference, §2): NT-Xent for SimCLR, the SCAN
clustering loss, and confidence-based cross-entropy for self-labelling."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# The original clamps probabilities at 1e-8 inside the entropy (losses/losses.py EPS).
EPS = 1e-8
# PyTorch's BCELoss, which the original uses for the consistency term, clamps log at -100.
LOG_FLOOR = -100.0


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric NT-Xent (SimCLR): both views act as anchors.

    z1, z2: B×d L2-normalised features of two views of the same B images. Each of the 2B rows is
    contrasted against the other 2B−1 rows; its positive is the other view of its image.
    (The original code uses only view-1 anchors, B terms; this is the standard 2B-term form.)
    Returns a scalar: the mean over the 2B anchors.
    """
    b = z1.shape[0]
    z = torch.cat([z1, z2]).float()
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets)


def entropy_of_mean(probs: torch.Tensor) -> torch.Tensor:
    """H(mean_i p_i) for probs B×K: the entropy of the batch's average assignment."""
    mean = probs.mean(0).clamp_min(EPS)
    return -(mean * mean.log()).sum()


class ScanLoss(NamedTuple):
    total: torch.Tensor
    consistency: torch.Tensor
    entropy: torch.Tensor


def scan_loss(anchor_logits: torch.Tensor, neighbor_logits: torch.Tensor, entropy_weight: float) -> ScanLoss:
    """SCAN loss of one head: −mean_i log⟨p_i, q_i⟩ − λ·H(mean_i p_i).

    anchor_logits, neighbor_logits: B×K logits of anchors and one neighbour each.
    log⟨p, q⟩ is computed as logsumexp(log p + log q), stable in low precision, floored at −100
    as BCE does. Gradients flow into both p and q. Returns (total, consistency, entropy).
    """
    log_p = F.log_softmax(anchor_logits.float(), dim=1)
    log_q = F.log_softmax(neighbor_logits.float(), dim=1)
    log_sim = torch.logsumexp(log_p + log_q, dim=1).clamp_min(LOG_FLOOR)
    consistency = -log_sim.mean()
    entropy = entropy_of_mean(log_p.exp())
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


class SelfLabelLoss(NamedTuple):
    loss: torch.Tensor | None
    confident: int


def confidence_ce(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float, class_balance: bool
) -> SelfLabelLoss:
    """Cross-entropy of strong views against confident weak-view pseudo-labels.

    weak_logits, strong_logits: B×K. A sample is confident when max softmax(weak) > threshold.
    With class_balance, each present pseudo-class c gets weight n/n_c (n confident samples, n_c of
    them in c), so every present class contributes equally. loss is None when no sample is confident.
    """
    probs = weak_logits.detach().float().softmax(1)
    confidence, target = probs.max(1)
    mask = confidence > threshold
    n = int(mask.sum())
    if n == 0:
        return SelfLabelLoss(None, 0)
    target = target[mask]
    weight = None
    if class_balance:
        counts = torch.bincount(target, minlength=probs.shape[1]).float()
        weight = torch.where(counts > 0, n / counts.clamp_min(1), torch.ones_like(counts))
    loss = F.cross_entropy(strong_logits[mask].float(), target, weight=weight)
    return SelfLabelLoss(loss, n)
