"""Exact cosine k-nearest neighbours with a chunked top-k: memory O(chunk·N + N·k), never N×N."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn(
    features: torch.Tensor, k: int, queries: torch.Tensor | None = None, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine neighbours.

    features: N×d database. queries: M×d, or None to search the database against itself, in which
    case each sample is excluded from its own list by index (duplicates of it are still found).
    Returns (indices M×k int64, similarities M×k float32), most similar first.
    """
    db = F.normalize(features.float(), dim=1)
    self_search = queries is None
    q_all = db if self_search else F.normalize(queries.float(), dim=1)
    if k > db.shape[0] - int(self_search):
        raise ValueError(f"k={k} needs more than {db.shape[0]} database samples")
    indices, sims = [], []
    for start in range(0, q_all.shape[0], chunk):
        q = q_all[start:start + chunk]
        sim = q @ db.T
        if self_search:
            rows = torch.arange(q.shape[0], device=sim.device)
            sim[rows, rows + start] = float("-inf")
        top = sim.topk(k, dim=1)
        indices.append(top.indices)
        sims.append(top.values)
    return torch.cat(indices), torch.cat(sims)


def neighbor_accuracy(neighbors: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of (anchor, neighbour) pairs that share the anchor's label. neighbors: N×k, labels: N."""
    return (labels[neighbors] == labels[:, None]).float().mean().item()
