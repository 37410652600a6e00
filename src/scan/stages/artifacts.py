"""Reading and writing what stages hand to each other through the run directory: the pretext
weights, mined neighbours and exported clustering models with their JSON sidecar."""

from __future__ import annotations

import json

import numpy as np
import torch

from scan.checkpoint import RunDir, load_weights, save_json, save_weights
from scan.config import RunConfig
from scan.errors import ScanError
from scan.models.backbones import build_backbone
from scan.models.heads import ClusteringModel, ContrastiveModel


def require(run: RunDir, stage: str, by: str) -> None:
    """Error unless `stage` has finished in `run` (its outputs are what `by` reads)."""
    if not run.done(stage).is_file():
        raise ScanError(f"{by} needs the finished {stage} stage in {run.root}; run `scan {stage}` first")


def save_pretext_model(run: RunDir, model: ContrastiveModel) -> None:
    """The pretext stage's hand-off: backbone.safetensors and projection_head.safetensors."""
    save_weights(model.backbone.state_dict(), run.stage("pretext") / "backbone.safetensors")
    save_weights(model.head.state_dict(), run.stage("pretext") / "projection_head.safetensors")


def load_pretext_model(run: RunDir, cfg: RunConfig) -> ContrastiveModel:
    """The SimCLR model (backbone + projection head) written by the pretext stage."""
    model = ContrastiveModel(build_backbone(cfg.pretext.backbone, cfg.data.channels), cfg.pretext.feature_dim)
    model.backbone.load_state_dict(load_weights(run.stage("pretext") / "backbone.safetensors"))
    model.head.load_state_dict(load_weights(run.stage("pretext") / "projection_head.safetensors"))
    return model


def load_neighbors(run: RunDir) -> tuple[torch.Tensor, torch.Tensor]:
    """(train neighbours N×k, selection-split neighbours M×val_k), int64."""
    folder = run.stage("mine")
    return (torch.from_numpy(np.load(folder / "neighbors.npy")),
            torch.from_numpy(np.load(folder / "val_neighbors.npy")))


def load_features(run: RunDir) -> torch.Tensor:
    """The train features mining used, N×D float32 (stored as float16)."""
    return torch.from_numpy(np.load(run.stage("mine") / "features.npy")).float()


def save_clustering_model(run: RunDir, stage: str, model: ClusteringModel, cfg: RunConfig, head: int) -> None:
    """model.safetensors (every head) plus model.json: what is needed to rebuild and apply it."""
    folder = run.stage(stage)
    save_weights(model.state_dict(), folder / "model.safetensors")
    save_json({
        "backbone": cfg.pretext.backbone,
        "in_channels": cfg.data.channels,
        "input_size": cfg.data.size,
        "mean": cfg.data.mean,
        "std": cfg.data.std,
        "num_clusters": cfg.clusters,
        "num_heads": len(model.cluster_heads.heads),
        "head": head,
    }, folder / "model.json")


def load_clustering_model(run: RunDir, stage: str) -> tuple[ClusteringModel, int]:
    """The exported model of `stage` ('cluster' or 'selflabel') and its selected head."""
    folder = run.stage(stage)
    card = json.loads((folder / "model.json").read_text())
    model = ClusteringModel(build_backbone(card["backbone"], card["in_channels"]), card["num_clusters"], card["num_heads"])
    model.load_state_dict(load_weights(folder / "model.safetensors"))
    return model, card["head"]
