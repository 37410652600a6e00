"""Stage 3, cluster: train cluster heads with the SCAN loss (neighbours should share a cluster,
clusters should be balanced) and keep the (model, head) with the lowest label-free validation loss.

Two ways to train, behind one interface: the full network on augmented images (`FullNetwork`, the
CIFAR/STL setting), or the heads alone on cached backbone features (`HeadsOnFeatures`, the
ImageNet setting: a frozen backbone gives every image one feature vector, so it is computed once).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn as nn

from scan.checkpoint import RunDir
from scan.config import RunConfig, fingerprint
from scan.console import echo
from scan.data.sources import ImageSplits
from scan.data.stream import Images, image_batches, on_device
from scan.data.views import make_view
from scan.losses import scan_loss, validation_scan_loss
from scan.models.heads import ClusteringModel
from scan.stages.artifacts import load_features, load_neighbors, load_pretext_backbone, save_clustering_model
from scan.stages.warm_start import warm_heads
from scan.training.batches import anchor_neighbor_batches, infer, local_batch_size, steps_per_epoch
from scan.training.context import RunContext
from scan.training.loop import StepResult, TrainState, fit
from scan.training.optim import build_optimizer


class FullNetwork:
    """Backbone and heads trained together on augmented anchors and neighbours, forwarded in one
    batch (BatchNorm sees both); selection probabilities from a weak-view pass over the split."""

    def __init__(self, ctx: RunContext, cfg: RunConfig, images: Images, select_images: Images,
                 pretext_backbone: Callable[[], nn.Module],
                 warm_start: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """images, select_images: uint8 N×C×H×W train and selection images; pretext_backbone():
        a fresh copy of the pretext backbone (each restart starts from it); warm_start: the train
        images' backbone features N×D and neighbours N×k, to warm-start the heads from
        (cluster.warm_start_heads), or None for random heads."""
        self.ctx, self.cfg, self.pretext_backbone, self.warm_start = ctx, cfg, pretext_backbone, warm_start
        self.images, self.select_images = on_device(images, ctx.device), on_device(select_images, ctx.device)
        self.view, self.weak = make_view(cfg.cluster.augment, cfg.data), make_view("weak", cfg.data)

    def fresh(self) -> tuple[ClusteringModel, torch.optim.Optimizer]:
        """The pretext backbone with new heads, and its optimiser."""
        cc = self.cfg.cluster
        model = ClusteringModel(self.pretext_backbone(), self.cfg.clusters, cc.num_heads)
        if self.warm_start is not None:
            # Each rank trains them from its own random stream; DistributedDataParallel's wrapping
            # (ctx.prepare) then copies rank 0's to the others, so a launch equals one process.
            start = time.perf_counter()
            started = warm_heads(*self.warm_start, self.cfg.clusters, cc.warm_start_heads, cc.num_heads,
                                 cc.entropy_weight, cc.select_entropy_weight)
            with torch.no_grad():
                for head, warm in zip(model.cluster_heads.heads, started):
                    head.weight.copy_(warm.weight)
                    head.bias.copy_(warm.bias)
            if self.ctx.is_main:
                losses = ", ".join(f"{w.val_loss:.4f}" for w in started)
                echo(f"cluster: {cc.num_heads} of {cc.warm_start_heads} heads trained on cached features start the step "
                     f"(validation loss {losses}; {time.perf_counter() - start:.1f}s)")
        self.model = model.to(self.ctx.device)
        self.net = self.ctx.prepare(self.model)
        return self.model, build_optimizer(cc.optimizer, self.model.parameters(), cc.lr, cc.weight_decay, cc.momentum)

    def train_mode(self) -> None:
        self.model.train()

    def batches(self, neighbors: torch.Tensor):
        pairs = anchor_neighbor_batches(self.ctx, neighbors, self.cfg.cluster.batch_size, self.cfg.cluster.include_self)
        return image_batches(self.images, pairs, self.ctx.device, self.cfg.runtime.workers)

    def logits(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """heads×2b×K logits of the batch's b anchors, then their b neighbours."""
        _, pixels = batch
        b = len(pixels) // 2
        return self.ctx.forward(self.net, torch.cat([self.view(pixels[:b]), self.view(pixels[b:])]))

    def select_probs(self) -> torch.Tensor:
        """heads×M×K probabilities of the selection split (sharded across ranks, gathered)."""
        ctx = self.ctx
        logits = infer(lambda x: ctx.forward(self.model, x), self.select_images, self.weak, self.cfg.mine.batch_size,
                       ctx.device, batch_dim=1, workers=self.cfg.runtime.workers, ctx=ctx)
        return logits.softmax(-1)


class HeadsOnFeatures:
    """Heads alone on a frozen backbone's cached features: the mined train features when mining
    used backbone features (computed once, shared), else one weak-view pass per split."""

    def __init__(self, ctx: RunContext, cfg: RunConfig, features: torch.Tensor, select_features: torch.Tensor,
                 pretext_backbone: Callable[[], nn.Module]) -> None:
        """features, select_features: N×D and M×D backbone features of the train and selection
        images; pretext_backbone(): the frozen backbone, exported with the heads."""
        self.ctx, self.cfg, self.pretext_backbone = ctx, cfg, pretext_backbone
        self.features, self.select_features = features.to(ctx.device), select_features.to(ctx.device)

    def fresh(self) -> tuple[ClusteringModel, torch.optim.Optimizer]:
        cc = self.cfg.cluster
        self.model = ClusteringModel(self.pretext_backbone(), self.cfg.clusters, cc.num_heads).to(self.ctx.device)
        self.model.backbone.eval().requires_grad_(False)
        heads = self.model.cluster_heads.parameters()
        return self.model, build_optimizer(cc.optimizer, heads, cc.lr, cc.weight_decay, cc.momentum)

    def train_mode(self) -> None:
        self.model.cluster_heads.train()

    def batches(self, neighbors: torch.Tensor):
        return anchor_neighbor_batches(self.ctx, neighbors, self.cfg.cluster.batch_size, self.cfg.cluster.include_self)

    def logits(self, pair: torch.Tensor) -> torch.Tensor:
        return self.model.cluster_heads(self.features[pair])

    def select_probs(self) -> torch.Tensor:
        return self.model.cluster_heads(self.select_features).softmax(-1)


Mode = FullNetwork | HeadsOnFeatures


def backbone_features(ctx: RunContext, cfg: RunConfig, run: RunDir, images: Images) -> torch.Tensor:
    """The frozen pretext backbone's features N×D of uint8 N×C×H×W images, from one weak-view pass."""
    backbone = ctx.runtime.prepare(load_pretext_backbone(run, cfg).to(ctx.device).eval())
    return infer(lambda x: ctx.forward(backbone, x), on_device(images, ctx.device), make_view("weak", cfg.data),
                 cfg.mine.batch_size, ctx.device, workers=cfg.runtime.workers)


def train_features(ctx: RunContext, cfg: RunConfig, run: RunDir, data: ImageSplits) -> torch.Tensor:
    """Frozen-backbone features N×D of the train split: the mined ones when mining used backbone
    features, else one weak-view pass."""
    return load_features(run) if cfg.mine.features == "backbone" else backbone_features(ctx, cfg, run, data.train)


def cached_features(ctx: RunContext, cfg: RunConfig, run: RunDir, data: ImageSplits) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-backbone features of the train and selection splits."""
    features = train_features(ctx, cfg, run, data)
    return features, features if cfg.cluster.select_on == "train" else backbone_features(ctx, cfg, run, data.test)


def scan_step(ctx: RunContext, mode: Mode, entropy_weight: float) -> Callable[[Any], StepResult]:
    """The SCAN step of every head on one batch of anchors and neighbours. The heads' losses are
    summed for the gradient, as in the original; their mean is logged as head_loss."""

    def step(batch: Any) -> StepResult:
        logits = mode.logits(batch)
        b = logits.shape[1] // 2
        parts = [scan_loss(h[:b], h[b:], entropy_weight, ctx.dist) for h in logits]
        return {"loss": sum(p.total for p in parts), "head_loss": torch.stack([p.total for p in parts]).mean(),
                "consistency": torch.stack([p.consistency for p in parts]).mean(),
                "entropy": torch.stack([p.entropy for p in parts]).mean()}

    return step


def run_cluster(ctx: RunContext, cfg: RunConfig, run: RunDir, data: ImageSplits) -> dict:
    """Train `cluster.num_heads` heads, `cluster.restarts` times from the pretext weights; write
    the (restart, epoch, head) with the lowest validation loss to cluster/model.safetensors.
    Heads on cached features train on rank 0 alone (seconds to minutes); the others wait."""
    if cfg.cluster.update_head_only:
        return ctx.main_alone(lambda alone: train_cluster(alone, cfg, run, data))
    return train_cluster(ctx, cfg, run, data)


def train_cluster(ctx: RunContext, cfg: RunConfig, run: RunDir, data: ImageSplits) -> dict:
    cc = cfg.cluster
    local_batch_size(ctx, cc.batch_size, "cluster.batch_size")
    neighbors, val_neighbors = (t.to(ctx.device) for t in load_neighbors(run))
    pretext = lambda: load_pretext_backbone(run, cfg)  # noqa: E731
    if cc.update_head_only:
        mode: Mode = HeadsOnFeatures(ctx, cfg, *cached_features(ctx, cfg, run, data), pretext)
    else:
        warm_start = (train_features(ctx, cfg, run, data).to(ctx.device), neighbors) if cc.warm_start_heads else None
        mode = FullNetwork(ctx, cfg, data.train, data.images(cc.select_on), pretext, warm_start)
    model, optimizer = mode.fresh()
    state = TrainState(run, "cluster", fingerprint(cfg, "cluster"), cfg.to_dict(), {"model": model, "optimizer": optimizer},
                       extra={"best_loss": float("inf"), "best_head": 0, "best_epoch": 0, "best_restart": 1})
    total = cc.epochs * cc.restarts
    if state.restore(ctx):
        echo(f"cluster: resuming after epoch {state.epoch}/{total}")

    def on_epoch_start(epoch: int) -> None:
        if epoch % cc.epochs == 0 and epoch > 0:
            # Another restart: the whole SCAN step again from the pretext weights, with new heads
            # and the random streams where the last one stopped; the selection spans all restarts.
            state.modules.update(zip(("model", "optimizer"), mode.fresh()))
        mode.train_mode()

    def on_epoch_end(epoch: int) -> dict:
        model = state.modules["model"].eval()
        probs = mode.select_probs()
        record = None
        if ctx.is_main:
            val = [validation_scan_loss(p, val_neighbors, cc.select_entropy_weight) for p in probs]
            totals = [v.total.item() for v in val]
            head = min(range(len(val)), key=totals.__getitem__)
            record = {"val_loss": totals, "val_consistency": [v.consistency.item() for v in val],
                      "val_entropy": [v.entropy.item() for v in val], "head": head,
                      "best": totals[head] < state.extra["best_loss"]}
            if cc.restarts > 1:
                record["restart"] = epoch // cc.epochs + 1
            if record["best"]:
                save_clustering_model(run, "cluster", model, cfg, head)
        record = ctx.dist.broadcast(record)
        if record["best"]:
            state.extra.update(best_loss=record["val_loss"][record["head"]], best_head=record["head"],
                               best_epoch=epoch % cc.epochs + 1, best_restart=epoch // cc.epochs + 1)
        return record

    def describe(r: dict) -> str:
        restart = f"restart {r['restart']}/{cc.restarts}  " if "restart" in r else ""
        return (f"{restart}consistency {r.get('consistency', float('nan')):.4f}  entropy {r.get('entropy', float('nan')):.4f}"
                f"  val {r['val_loss'][r['head']]:.4f} head {r['head']}{' *best*' if r['best'] else ''}")

    fit(ctx, state, epochs=total, steps=steps_per_epoch(len(neighbors), cc.batch_size),
        batches=lambda _: mode.batches(neighbors), step=scan_step(ctx, mode, cc.entropy_weight), on_epoch_start=on_epoch_start,
        on_epoch_end=on_epoch_end, describe=describe)
    return dict(state.extra)
