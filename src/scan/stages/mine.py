"""Stage 2, mine: embed the images without augmentation and find each one's k nearest neighbours."""

from __future__ import annotations

from pathlib import Path

import torch

from scan.checkpoint import RunDir, save_npy
from scan.config import RunConfig, fingerprint
from scan.console import echo
from scan.data.sources import ImageSplits
from scan.data.stream import Images
from scan.data.views import make_view
from scan.knn import knn, neighbor_accuracy
from scan.models.features import extract_features
from scan.stages.artifacts import load_pretext_backbone, load_pretext_model
from scan.training.batches import infer
from scan.training.context import RunContext
from scan.whitening import search_space


def embed(ctx: RunContext, cfg: RunConfig, run: RunDir, images: Images, path: Path) -> torch.Tensor:
    """Pretext features of uint8 N×C×H×W images (weak view): N×128 projection outputs (as the
    original does for SimCLR) or N×D backbone features (mine.features=backbone). One process
    writes them to `path` as it goes (float16, resumable, images/s logged: scan.models.features);
    under several, each embeds its shard in memory and every rank gets all N rows, in order."""
    model = load_pretext_model(run, cfg) if cfg.mine.features == "projection" else load_pretext_backbone(run, cfg)
    net = ctx.runtime.prepare(model.to(ctx.device).eval())
    fn, view = (lambda x: ctx.forward(net, x)), make_view("weak", cfg.data)
    if ctx.world_size == 1:
        return extract_features(fn, images, view, cfg.mine.batch_size, ctx.device, path, key=fingerprint(cfg, "mine"),
                                workers=cfg.runtime.workers, what="mine: features").to(ctx.device)
    return infer(fn, images, view, cfg.mine.batch_size, ctx.device, workers=cfg.runtime.workers, ctx=ctx)


def run_mine(ctx: RunContext, cfg: RunConfig, run: RunDir, data: ImageSplits) -> dict:
    """Write features.npy, neighbors.npy (N×k) and val_neighbors.npy (selection split, N×val_k).
    Embedding is sharded across ranks; rank 0 searches the neighbours (in the whitened space when
    mine.whitening > 0; features.npy keeps the features as embedded) and writes the files."""
    mc = cfg.mine
    folder = run.stage("mine")
    features = embed(ctx, cfg, run, data.train, folder / "features.npy")
    test_features = embed(ctx, cfg, run, data.test, folder / "test_features.npy") if cfg.cluster.select_on == "test" else None
    summary: dict = {"k": mc.k, "n": len(features)}
    if not ctx.is_main:
        return summary
    space, test_space = search_space(features, mc.whitening, test_features)
    neighbors, _ = knn(space, mc.k, backend=mc.backend)
    if test_space is None:
        val_neighbors = neighbors[:, : mc.val_k]
    else:
        val_neighbors, _ = knn(test_space, mc.val_k, backend=mc.backend)
    if ctx.world_size > 1:  # one process wrote them as it went
        save_npy(features.cpu().half().numpy(), folder / "features.npy")
    save_npy(neighbors.cpu().numpy(), folder / "neighbors.npy")
    save_npy(val_neighbors.cpu().numpy(), folder / "val_neighbors.npy")
    whitened = f", whitened with power {mc.whitening:g}" if mc.whitening else ""
    line = f"mine: top-{mc.k} neighbours of {len(features)} train images ({features.shape[1]}-d {mc.features} features{whitened})"
    if data.train_labels is not None:
        summary["neighbor_accuracy"] = neighbor_accuracy(neighbors.cpu(), data.train_labels)
        line += f"; neighbour accuracy {summary['neighbor_accuracy']:.4f}"
    echo(line)
    return summary
