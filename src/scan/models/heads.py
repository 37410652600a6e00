"""Models are a backbone plus heads: the SimCLR projection head and the SCAN cluster heads."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ContrastiveModel(nn.Module):
    """Backbone -> MLP (Linear D×D, ReLU, Linear D×feature_dim) -> L2-normalised features."""

    def __init__(self, backbone: nn.Module, feature_dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        dim = backbone.out_dim
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, feature_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×C×H×W -> B×feature_dim, unit L2 norm."""
        return F.normalize(self.head(self.backbone(x)), dim=1)


class ClusterHeads(nn.Module):
    """`num_heads` independent linear heads D -> K, applied to the same features."""

    def __init__(self, dim: int, num_clusters: int, num_heads: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, num_clusters) for _ in range(num_heads))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: B×D -> logits num_heads×B×K."""
        return torch.stack([head(features) for head in self.heads])


class ClusteringModel(nn.Module):
    """Backbone + cluster heads; `forward` returns logits num_heads×B×K (no softmax)."""

    def __init__(self, backbone: nn.Module, num_clusters: int, num_heads: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.cluster_heads = ClusterHeads(backbone.out_dim, num_clusters, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×C×H×W -> logits num_heads×B×K."""
        return self.cluster_heads(self.backbone(x))

    def keep_head(self, head: int) -> None:
        """Drop every head but `head`, which becomes head 0 (for self-labelling and export)."""
        self.cluster_heads.heads = nn.ModuleList([self.cluster_heads.heads[head]])
