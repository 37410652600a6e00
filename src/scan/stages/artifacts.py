"""Reading and writing what stages hand to each other through the run directory: the pretext
weights, mined neighbours and exported clustering models with their JSON sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from scan.checkpoint import RunDir, load_weights, save_json, save_weights
from scan.config import DataConfig, RunConfig
from scan.data import imagenet
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


def save_pretext_backbone(run: RunDir, backbone: nn.Module) -> None:
    """The hand-off of a pretrained backbone taken as it is: backbone.safetensors alone."""
    save_weights(backbone.state_dict(), run.stage("pretext") / "backbone.safetensors")


def load_pretext_backbone(run: RunDir, cfg: RunConfig) -> nn.Module:
    """The backbone written by the pretext stage (trained here or pretrained)."""
    backbone = build_backbone(cfg.pretext.backbone, cfg.data.channels, img_size=cfg.data.size)
    backbone.load_state_dict(load_weights(run.stage("pretext") / "backbone.safetensors"))
    return backbone


def load_pretext_model(run: RunDir, cfg: RunConfig) -> ContrastiveModel:
    """The SimCLR model (backbone + projection head) written by the pretext stage."""
    model = ContrastiveModel(load_pretext_backbone(run, cfg), cfg.pretext.feature_dim)
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


CLUSTERING_STEPS = ("cluster", "selflabel")


def model_card(cfg: RunConfig, model: ClusteringModel, head: int) -> dict:
    """The JSON sidecar of an exported clustering model: everything needed to rebuild it and to
    prepare images for it (decode crop, base size, channels, normalisation) and where its
    backbone came from (pretext.source: trained here or pretrained, and the weight file)."""
    return {
        "backbone": cfg.pretext.backbone,
        "backbone_source": cfg.pretext.source,
        "backbone_weights": cfg.pretext.weights,
        "in_channels": cfg.data.channels,
        "input_size": cfg.data.size,
        "crop": decode_crop(cfg.data),
        "mean": cfg.data.mean,
        "std": cfg.data.std,
        "num_clusters": cfg.clusters,
        "num_heads": len(model.cluster_heads.heads),
        "head": head,
    }


def decode_crop(data: DataConfig) -> float:
    """Share of an image file's short side that the source keeps when decoding (centre crop):
    the standard 224/256 for the ImageNet sources, data.crop for the others (1 by default)."""
    return imagenet.CROP if data.source in imagenet.LOADERS else data.crop


def save_clustering_model(run: RunDir, stage: str, model: ClusteringModel, cfg: RunConfig, head: int) -> None:
    """model.safetensors (every head) plus model.json: what is needed to rebuild and apply it."""
    folder = run.stage(stage)
    save_weights(model.state_dict(), folder / "model.safetensors")
    save_json(model_card(cfg, model, head), folder / "model.json")


def read_model_card(folder: Path) -> dict:
    """model.json of an exported model in `folder` (a run's cluster/ or selflabel/ folder, or a
    copy of its two files anywhere)."""
    path = folder / "model.json"
    if not path.is_file():
        raise ScanError(f"no exported model in {folder} (missing model.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ScanError(f"{path} is not valid JSON ({err})") from None


def load_exported_model(folder: Path) -> tuple[ClusteringModel, dict]:
    """The clustering model in `folder` (model.safetensors + model.json) and its sidecar."""
    card = read_model_card(folder)
    backbone = build_backbone(card["backbone"], card["in_channels"], img_size=card["input_size"])
    model = ClusteringModel(backbone, card["num_clusters"], card["num_heads"])
    model.load_state_dict(load_weights(folder / "model.safetensors"))
    return model, card


def load_clustering_model(run: RunDir, stage: str) -> tuple[ClusteringModel, int]:
    """The exported model of `stage` ('cluster' or 'selflabel') and its selected head."""
    model, card = load_exported_model(run.stage(stage))
    return model, card["head"]


def final_step(run: RunDir) -> str:
    """The clustering step whose model is the run's result: 'selflabel' when it finished and its
    safeguard kept its model (scan.stages.safeguard), else 'cluster'."""
    if run.done("selflabel").is_file():
        summary = json.loads(run.done("selflabel").read_text()).get("summary", {})
        if summary.get("final", "selflabel") == "selflabel":
            return "selflabel"
    if run.done("cluster").is_file():
        return "cluster"
    raise ScanError(f"{run.root} has no finished cluster or selflabel stage; run `scan cluster` first")


def final_reason(run: RunDir) -> str | None:
    """Why the SCAN model stayed final although self-labelling ran (None when it did not say)."""
    if not run.done("selflabel").is_file():
        return None
    return json.loads(run.done("selflabel").read_text()).get("summary", {}).get("reason")


def set_cluster_names(run: RunDir, stage: str, names: list[str | None]) -> None:
    """Record in `stage`'s model.json the class each cluster was matched to (None: unmatched).
    Written by evaluation, the only place that reads labels; predictions then carry the names."""
    folder = run.stage(stage)
    card = read_model_card(folder)
    card["cluster_names"] = names
    save_json(card, folder / "model.json")
