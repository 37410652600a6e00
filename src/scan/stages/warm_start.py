"""Warm-started heads for the full-network SCAN step: many linear heads trained first on the
cached backbone features (seconds), the ones with the lowest label-free loss becoming the starting
heads of the full network.

Why: with the backbone trained too, all heads share it and settle in one solution, which from
random heads was a poor one in 8 of 20 digits seeds (the 1s and 8s each split by style); only a
restart of the whole step escapes it. Heads on frozen features are cheap enough to train dozens
at once, and the label-free loss picks a good one (digits, 20 seeds: the lowest-loss of 20 frozen
heads put 0.91-0.98 of the train images right; started from such heads, 19 of 20 runs reached
0.95 ACC: benchmarks/README.md, "Warm-started heads").
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from scan.kestimate import head_logits, train_heads
from scan.losses import validation_scan_loss

# Training of the candidate heads, as kestimate trains its heads (600 Adam steps of 256 anchors
# at 3e-3: about 100 passes over the 1,437 digits train images, 2.6 over MNIST's 60,000, where the
# heads are far from converged but still lead the full network well). Set on digits and MNIST,
# whose backbone features are unnormalised; other backbones' feature scales are untried.
STEPS, BATCH_SIZE, LR = 600, 256, 3e-3


class WarmHead(NamedTuple):
    """One trained linear head: weight K×D, bias K, and its validation SCAN loss."""

    weight: torch.Tensor
    bias: torch.Tensor
    val_loss: float


def warm_heads(features: torch.Tensor, neighbors: torch.Tensor, num_clusters: int, candidates: int, keep: int,
               entropy_weight: float, select_entropy_weight: float) -> list[WarmHead]:
    """Train `candidates` SCAN heads on fixed features and return the `keep` with the lowest
    validation SCAN loss (on the same features and neighbours), best first.

    features: float N×D backbone features as the heads will see them (not normalised);
    neighbors: int64 N×k mined neighbours of the same images. Uses torch's global random stream.
    """
    layer = train_heads(features, neighbors, [num_clusters], candidates, STEPS, BATCH_SIZE, LR, entropy_weight)
    with torch.no_grad():
        probs = head_logits(layer, features, [num_clusters], candidates)[0].softmax(2).transpose(0, 1)
        losses = [validation_scan_loss(p, neighbors, select_entropy_weight).total.item() for p in probs]
    weight = layer.weight.detach().unflatten(0, (candidates, num_clusters))
    bias = layer.bias.detach().unflatten(0, (candidates, num_clusters))
    best = sorted(range(candidates), key=losses.__getitem__)[:keep]
    return [WarmHead(weight[i].clone(), bias[i].clone(), losses[i]) for i in best]
