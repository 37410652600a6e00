"""Stage 4, selflabel: confident predictions on weak views become targets for strong views.

Self-labelling can also hurt: when few images are confident, or the confident ones fall in a few
clusters, it trains on a small, skewed set (CIFAR-10 on a CPU: 4–8 % above 0.99, and ACC fell from
0.322 to 0.288). Without labels the stage checks for that before and after training (`safeguard`)
and keeps the SCAN model as the final one when it finds it; done.json says which model is final
and why, and evaluation copies that into metrics.json.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn

from scan.checkpoint import RunDir
from scan.config import RunConfig, fingerprint
from scan.console import echo
from scan.data.sources import ImageSplits
from scan.data.stream import image_batches, on_device
from scan.data.views import make_view
from scan.losses import pseudo_label_ce, pseudo_labels
from scan.models.heads import ClusteringModel
from scan.stages.artifacts import load_clustering_model, load_features, load_neighbors, save_clustering_model
from scan.stages.safeguard import (agreement_change, assignment_balance, cluster_thresholds, compare_agreement,
                                   compare_balance, confident_set)
from scan.training.batches import infer, local_batch_size, shuffled_batches, steps_per_epoch
from scan.training.context import RunContext
from scan.training.loop import StepResult, TrainState, fit
from scan.training.optim import build_optimizer


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay·ema + (1−decay)·model for parameters; buffers (BN statistics) are copied.
    The live model keeps training on its own weights (the original overwrote them every step)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def train_probs(ctx: RunContext, cfg: RunConfig, model: ClusteringModel, data: ImageSplits,
                features: torch.Tensor | None = None) -> torch.Tensor:
    """Probabilities N×K of the model's head 0 on the weak view of every train image (eval mode),
    or on the cached backbone `features` N×D of those images when given."""
    model.eval()
    if features is not None:
        with torch.no_grad():
            return model.cluster_heads(features)[0].softmax(-1)
    return infer(lambda x: ctx.forward(model, x)[0], on_device(data.train, ctx.device), make_view("weak", cfg.data),
                 cfg.mine.batch_size, ctx.device, workers=cfg.runtime.workers, ctx=ctx).softmax(-1)


def selflabel_step(ctx: RunContext, net: Callable, weak: Callable, strong: Callable, threshold: float | torch.Tensor,
                   class_balance: bool) -> Callable[[tuple], StepResult]:
    """The self-label step: pseudo-labels from the weak view (no gradient, train-mode BatchNorm as
    in the original, so its statistics update too) above `threshold` (one, or one per cluster),
    cross-entropy on the strong view. Skipped on
    every rank when no image of the global batch is confident (decided before the strong pass)."""

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> StepResult:
        _, pixels = batch
        with torch.no_grad():
            labels = pseudo_labels(ctx.forward(net, weak(pixels))[0], threshold, class_balance, ctx.dist)
        if labels.count == 0:
            return None
        loss = pseudo_label_ce(ctx.forward(net, strong(pixels))[0], labels, ctx.world_size)
        return {"loss": loss, "confident": torch.tensor(labels.count / (len(pixels) * ctx.world_size), device=loss.device)}

    return step


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


def run_selflabel(ctx: RunContext, cfg: RunConfig, run: RunDir, data: ImageSplits) -> dict:
    """Fine-tune the selected cluster head and backbone (or, selflabel.update_head_only, the head
    alone on the cached backbone features, on rank 0: seconds); write selflabel/model.safetensors
    unless the safeguard keeps the SCAN model. Returns a summary with the final step and the reason."""
    if cfg.selflabel.update_head_only:
        return ctx.main_alone(lambda alone: train_selflabel(alone, cfg, run, data))
    return train_selflabel(ctx, cfg, run, data)


def train_selflabel(ctx: RunContext, cfg: RunConfig, run: RunDir, data: ImageSplits) -> dict:
    sc = cfg.selflabel
    local_batch_size(ctx, sc.batch_size, "selflabel.batch_size")
    model, head = load_clustering_model(run, "cluster")
    model.keep_head(head)
    model.to(ctx.device)
    # Head only: the frozen backbone's features are the ones mining cached, and the head trains on
    # them without augmentation (the same features give the target and the prediction).
    features = load_features(run).to(ctx.device) if sc.update_head_only else None
    scan_probs = train_probs(ctx, cfg, model, data, features)
    thresholds = cluster_thresholds(scan_probs, sc.threshold, sc.cluster_quota)
    start = confident_set(scan_probs, thresholds, sc.min_confident)
    lowest = "" if sc.cluster_quota == 0 else f", at least {sc.cluster_quota:.0%} of each cluster: from {thresholds.min():.3f}"
    echo(f"selflabel: {start.share:.1%} of the train images are confident (> {sc.threshold}{lowest}), in "
         f"{start.clusters}/{cfg.clusters} clusters")
    if not start.enough:
        echo(f"selflabel: skipped, the SCAN model stays final: {start.reason}")
        return {"final": "cluster", "reason": start.reason, "confident": start.share}

    ema = copy.deepcopy(model) if sc.ema > 0 else None  # before DistributedDataParallel hooks the model
    if features is not None:
        model.backbone.requires_grad_(False)
        images, net, params = features, model.cluster_heads, model.cluster_heads.parameters()
        weak = strong = _unchanged
    else:
        images, net, params = on_device(data.train, ctx.device), ctx.prepare(model), model.parameters()
        weak, strong = make_view("weak", cfg.data), make_view(sc.augment, cfg.data)
    optimizer = build_optimizer(sc.optimizer, params, sc.lr, sc.weight_decay, sc.momentum)
    modules: dict = {"model": model, "optimizer": optimizer}
    if ema is not None:
        modules["ema"] = ema
    state = TrainState(run, "selflabel", fingerprint(cfg, "selflabel"), cfg.to_dict(), modules)
    if state.restore(ctx):
        echo(f"selflabel: resuming after epoch {state.epoch}/{sc.epochs}")

    def batches(_: int):
        order = shuffled_batches(ctx, len(images), sc.batch_size)
        if features is not None:
            return ((idx, features[idx]) for idx in order)
        return image_batches(images, order, ctx.device, cfg.runtime.workers)

    fit(ctx, state, epochs=sc.epochs, steps=steps_per_epoch(len(images), sc.batch_size), batches=batches,
        on_epoch_start=(lambda _: model.cluster_heads.train()) if features is not None else None,
        step=selflabel_step(ctx, net, weak, strong, thresholds.to(ctx.device), sc.class_balance), after_step=(lambda: ema_update(ema, model, sc.ema)) if ema is not None else None,
        describe=lambda r: f"confident {r['confident']:.3f}" if "confident" in r else "")
    final = ema if ema is not None else model
    if ctx.is_main:
        save_clustering_model(run, "selflabel", final, cfg, head=0)
    final_probs = train_probs(ctx, cfg, final, data, features)
    neighbors, _ = load_neighbors(run)
    balance = [assignment_balance(scan_probs), assignment_balance(final_probs)]
    agreement = agreement_change(scan_probs, final_probs, neighbors)
    end = (compare_balance(*balance, sc.max_balance_drop)
           or compare_agreement(agreement, sc.max_agreement_drop, sc.agreement_z))
    summary = {"final": "selflabel" if end is None else "cluster", "confident": start.share,
               "balance": balance, "neighbor_agreement": [agreement.before, agreement.after],
               "agreement_stderr": agreement.stderr,
               "skipped_steps": sum(r["skipped_steps"] for r in state.history)}
    if end is not None:
        summary["reason"] = end
        echo(f"selflabel: the SCAN model stays final: {end}")
    return summary
