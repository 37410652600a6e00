"""Stage 1, pretext: SimCLR trains the backbone so that two augmented views of an image agree."""

from __future__ import annotations

from typing import Callable

import torch

from scan.checkpoint import RunDir
from scan.config import RunConfig, fingerprint
from scan.console import echo
from scan.data.sources import ImageSplits
from scan.data.stream import image_batches, on_device
from scan.data.views import make_view
from scan.errors import ScanError
from scan.losses import multicrop_nt_xent
from scan.models.backbones import build_backbone
from scan.models.heads import ContrastiveModel
from scan.models.hub import load_pretrained
from scan.models.pretrained import load_moco_v2
from scan.stages.artifacts import save_pretext_backbone, save_pretext_model
from scan.training.batches import local_batch_size, shuffled_batches, steps_per_epoch
from scan.training.context import RunContext
from scan.training.loop import StepResult, TrainState, fit
from scan.training.optim import build_optimizer, cosine_schedule


def simclr_step(ctx: RunContext, net: Callable, view: Callable, temperature: float,
                local_view: Callable | None = None, local_crops: int = 0) -> Callable[[tuple], StepResult]:
    """The SimCLR step: two views of each of the rank's b images through `net` in one batch (so
    BatchNorm sees 2b images), NT-Xent against the views of the whole global batch. With
    `local_crops`, that many small crops of each image (`local_view`) go through `net` in a second
    batch, and the loss is multi-crop NT-Xent over all the views."""

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> StepResult:
        _, pixels = batch
        b = len(pixels)
        z = ctx.forward(net, torch.cat([view(pixels), view(pixels)]))
        if local_crops:
            z = torch.cat([z, ctx.forward(net, torch.cat([local_view(pixels) for _ in range(local_crops)]))])
        return {"loss": multicrop_nt_xent(z.unflatten(0, (-1, b)), temperature, ctx.dist)}

    return step


def run_pretext(ctx: RunContext, cfg: RunConfig, run: RunDir, data: ImageSplits) -> dict:
    """Train SimCLR on the pretext images (or import `pretext.weights`); write the backbone and
    projection head weights. pretext.source=pretrained: load the backbone's pretrained weights and
    write the backbone alone. Returns a summary."""
    pc = cfg.pretext
    if pc.source == "pretrained":
        backbone = build_backbone(pc.backbone, cfg.data.channels, img_size=cfg.data.size)
        loaded = load_pretrained(backbone, pc.backbone, pc.weights)
        echo(f"pretext: {pc.backbone} ({backbone.out_dim}-d features) with the pretrained weights of {loaded}, no training")
        if ctx.is_main:
            save_pretext_backbone(run, backbone)
        return {"weights": loaded}
    model = ContrastiveModel(build_backbone(pc.backbone, cfg.data.channels), pc.feature_dim)
    if pc.weights:
        load_moco_v2(pc.weights, model)
        echo(f"pretext: imported {pc.weights} (MoCo v2 layout), no training")
        if ctx.is_main:
            save_pretext_model(run, model)
        return {"weights": pc.weights}
    if pc.epochs == 0:
        raise ScanError("pretext.epochs is 0 and no pretext.weights is given: pass pretext.weights=FILE "
                        "(a MoCo v2 checkpoint) or set pretext.epochs")
    local_batch_size(ctx, pc.batch_size, "pretext.batch_size")
    model.to(ctx.device)
    net = ctx.prepare(model)
    images = on_device(data.pretext_images(), ctx.device)
    optimizer = build_optimizer("sgd", model.parameters(), pc.lr, pc.weight_decay, pc.momentum)
    state = TrainState(run, "pretext", fingerprint(cfg, "pretext"), cfg.to_dict(), {"model": model, "optimizer": optimizer})
    if state.restore(ctx):
        echo(f"pretext: resuming after epoch {state.epoch}/{pc.epochs}")
    fit(ctx, state, epochs=pc.epochs, steps=steps_per_epoch(len(images), pc.batch_size),
        batches=lambda _: image_batches(images, shuffled_batches(ctx, len(images), pc.batch_size), ctx.device,
                                        cfg.runtime.workers),
        step=simclr_step(ctx, net, make_view("simclr", cfg.data), pc.temperature, make_view("local", cfg.data),
                         pc.local_crops),
        lrs=cosine_schedule(pc.lr, pc.epochs, pc.lr_decay_rate, pc.warmup_epochs),
        describe=lambda r: f"lr {r['lr']:.4g}")
    if ctx.is_main:
        save_pretext_model(run, model)
    return {"final_loss": state.history[-1].get("loss") if state.history else None}
