"""Stage 3, cluster: train cluster heads with the SCAN loss (neighbours should share a cluster,
clusters should be balanced) and keep the (model, head) with the lowest label-free validation loss."""

from __future__ import annotations

import time
from typing import Callable

import torch

from scan.checkpoint import RunDir
from scan.config import RunConfig, fingerprint
from scan.console import echo, progress
from scan.data.sources import ImageSplits
from scan.data.stream import image_batches, on_device
from scan.data.views import make_view
from scan.losses import scan_loss, validation_scan_loss
from scan.models.heads import ClusteringModel
from scan.stages.artifacts import load_features, load_neighbors, load_pretext_model, require, save_clustering_model
from scan.train import Resumable, Runtime, anchor_neighbor_batches, build_optimizer, check_finite, infer


def run_cluster(cfg: RunConfig, run: RunDir, data: ImageSplits, device: torch.device) -> dict:
    """Train `cluster.num_heads` heads, `cluster.restarts` times from the pretext weights; write
    the (restart, epoch, head) with the lowest validation loss to cluster/model.safetensors."""
    require(run, "mine", "cluster")
    cc = cfg.cluster
    images = on_device(data.train, device)
    select_images = on_device(data.images(cc.select_on), device)
    neighbors, val_neighbors = (t.to(device) for t in load_neighbors(run))
    weak = make_view("weak", cfg.data)
    view = make_view(cc.augment, cfg.data)

    runtime = Runtime.from_config(cfg.runtime, device)

    def fresh_start() -> tuple[ClusteringModel, Callable, torch.optim.Optimizer]:
        """The pretext backbone with new heads, its forward function and optimiser."""
        model = ClusteringModel(load_pretext_model(run, cfg).backbone, cfg.clusters, cc.num_heads).to(device)
        if cc.update_head_only:
            model.backbone.eval().requires_grad_(False)
        forward = runtime.wrap(model.backbone if cc.update_head_only else model)
        params = model.cluster_heads.parameters() if cc.update_head_only else model.parameters()
        return model, forward, build_optimizer(cc.optimizer, params, cc.lr, cc.weight_decay, cc.momentum)

    model, forward, optimizer = fresh_start()
    if cc.update_head_only:
        # A frozen backbone gives every image one fixed feature vector: compute it once and train
        # the linear heads on the cache (orders of magnitude faster than a backbone pass per step).
        if cfg.mine.features == "backbone":  # mining already embedded the train split
            features = load_features(run).to(device)
        else:
            features = infer(forward, images, weak, cfg.mine.batch_size, device, workers=cfg.runtime.workers)
        select_features = features if cc.select_on == "train" else infer(
            forward, select_images, weak, cfg.mine.batch_size, device, workers=cfg.runtime.workers)
    state = Resumable(run, "cluster", fingerprint(cfg, "cluster"), cfg.to_dict(), {"model": model, "optimizer": optimizer},
                      extra={"best_loss": float("inf"), "best_head": 0, "best_epoch": 0, "best_restart": 1})
    total = cc.epochs * cc.restarts
    if state.restore():
        echo(f"cluster: resuming after epoch {state.epoch}/{total}")

    steps = max(1, len(images) // cc.batch_size)
    for epoch in range(state.epoch, total):
        start = time.perf_counter()
        restart = epoch // cc.epochs
        if epoch % cc.epochs == 0 and epoch > 0:
            # Another restart: the full SCAN step again from the pretext weights, with new heads
            # and the random stream where the last one stopped; the selection spans all restarts.
            model, forward, optimizer = fresh_start()
            state.modules.update(model=model, optimizer=optimizer)
        if not cc.update_head_only:
            model.train()
        sums = torch.zeros(3)
        pairs = anchor_neighbor_batches(neighbors, cc.batch_size, device)
        # Head-only steps read cached features; the others read (or stream) the images.
        batches = ((pair, None) for pair in pairs) if cc.update_head_only else image_batches(
            images, pairs, device, cfg.runtime.workers)
        for pair, pixels in progress(batches, steps, f"cluster {epoch + 1}"):
            b = len(pair) // 2  # anchors, then one neighbour of each
            if cc.update_head_only:
                logits = model.cluster_heads(features[pair])
            else:
                logits = forward(torch.cat([view(pixels[:b]), view(pixels[b:])]))
            parts = [scan_loss(h[:b], h[b:], cc.entropy_weight) for h in logits]
            loss = sum(p.total for p in parts)
            check_finite(loss, "cluster", epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.tensor([[p.total.item(), p.consistency.item(), p.entropy.item()] for p in parts]).mean(0)

        model.eval()
        if cc.update_head_only:
            probs = model.cluster_heads(select_features).softmax(-1)
        else:
            probs = infer(forward, select_images, weak, cfg.mine.batch_size, device, batch_dim=1,
                          workers=cfg.runtime.workers).softmax(-1)
        val = [validation_scan_loss(p, val_neighbors, cc.select_entropy_weight) for p in probs]
        val_totals = [v.total.item() for v in val]
        head = min(range(len(val)), key=val_totals.__getitem__)
        improved = val_totals[head] < state.extra["best_loss"]
        if improved:
            state.extra.update(best_loss=val_totals[head], best_head=head, best_epoch=epoch % cc.epochs + 1,
                               best_restart=restart + 1)
            save_clustering_model(run, "cluster", model, cfg, head)
        mean = (sums / steps).tolist()
        record = {
            "epoch": epoch + 1, "loss": mean[0], "consistency": mean[1], "entropy": mean[2],
            "val_loss": val_totals, "val_consistency": [v.consistency.item() for v in val],
            "val_entropy": [v.entropy.item() for v in val], "head": head, "seconds": time.perf_counter() - start,
        }
        if cc.restarts > 1:
            record["restart"] = restart + 1
        state.history.append(record)
        state.epoch = epoch + 1
        state.save()
        echo(f"cluster epoch {epoch + 1}/{total}{f' (restart {restart + 1}/{cc.restarts})' if cc.restarts > 1 else ''}  loss {mean[0]:.4f} (consistency {mean[1]:.4f}, entropy {mean[2]:.4f})"
             f"  val loss {val_totals[head]:.4f} head {head}{' *best*' if improved else ''}  {record['seconds']:.1f}s")
    return dict(state.extra)
