"""Stage 2, mine: embed the images without augmentation and find each one's k nearest neighbours."""

from __future__ import annotations

import torch

from scan.checkpoint import RunDir, save_npy
from scan.config import RunConfig
from scan.console import echo
from scan.data.sources import ImageSplits
from scan.data.views import make_view
from scan.knn import knn, neighbor_accuracy
from scan.stages.artifacts import load_pretext_model, require
from scan.train import Runtime, infer


def embed(cfg: RunConfig, run: RunDir, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pretext features of uint8 N×C×H×W images (weak view): N×128 projection outputs (as the
    original does for SimCLR) or N×D backbone features (mine.features=backbone)."""
    model = load_pretext_model(run, cfg).to(device).eval()
    fn = Runtime.from_config(cfg.runtime, device).wrap(model if cfg.mine.features == "projection" else model.backbone)
    return infer(fn, images, make_view("weak", cfg.data), cfg.mine.batch_size, device, workers=cfg.runtime.workers)


def run_mine(cfg: RunConfig, run: RunDir, data: ImageSplits, device: torch.device) -> dict:
    """Write features.npy, neighbors.npy (N×k) and val_neighbors.npy (selection split, N×val_k)."""
    require(run, "pretext", "mine")
    mc = cfg.mine
    features = embed(cfg, run, data.train, device)
    neighbors, _ = knn(features, mc.k, backend=mc.backend)
    if cfg.cluster.select_on == "train":
        val_neighbors = neighbors[:, : mc.val_k]
    else:
        val_neighbors, _ = knn(embed(cfg, run, data.test, device), mc.val_k, backend=mc.backend)
    folder = run.stage("mine")
    save_npy(features.cpu().half().numpy(), folder / "features.npy")
    save_npy(neighbors.cpu().numpy(), folder / "neighbors.npy")
    save_npy(val_neighbors.cpu().numpy(), folder / "val_neighbors.npy")
    summary: dict = {"k": mc.k, "n": len(features)}
    line = f"mine: top-{mc.k} neighbours of {len(features)} train images ({features.shape[1]}-d {mc.features} features)"
    if data.train_labels is not None:
        summary["neighbor_accuracy"] = neighbor_accuracy(neighbors.cpu(), data.train_labels)
        line += f"; neighbour accuracy {summary['neighbor_accuracy']:.4f}"
    echo(line)
    return summary
