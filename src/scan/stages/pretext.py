"""Stage 1, pretext: SimCLR trains the backbone so that two augmented views of an image agree."""

from __future__ import annotations

import time

import torch

from scan.checkpoint import RunDir
from scan.config import RunConfig, fingerprint
from scan.console import echo, progress
from scan.data.sources import ImageSplits
from scan.data.stream import image_batches, on_device
from scan.data.views import make_view
from scan.errors import ScanError
from scan.losses import nt_xent
from scan.models.backbones import build_backbone
from scan.models.heads import ContrastiveModel
from scan.models.pretrained import load_moco_v2
from scan.stages.artifacts import save_pretext_model
from scan.train import Resumable, Runtime, build_optimizer, check_finite, cosine_schedule, set_lr, shuffled_batches


def run_pretext(cfg: RunConfig, run: RunDir, data: ImageSplits, device: torch.device) -> dict:
    """Train SimCLR on the pretext images (or import `pretext.weights`); write the backbone and
    projection head weights. Returns a summary."""
    pc = cfg.pretext
    model = ContrastiveModel(build_backbone(pc.backbone, cfg.data.channels), pc.feature_dim)
    if pc.weights:
        load_moco_v2(pc.weights, model)
        echo(f"pretext: imported {pc.weights} (MoCo v2 layout), no training")
        save_pretext_model(run, model)
        return {"weights": pc.weights}
    if pc.epochs == 0:
        raise ScanError("pretext.epochs is 0 and no pretext.weights is given: pass pretext.weights=FILE "
                        "(a MoCo v2 checkpoint) or set pretext.epochs")
    model.to(device)
    runtime = Runtime.from_config(cfg.runtime, device)
    forward = runtime.wrap(model)
    images = on_device(data.pretext_images(), device)
    view = make_view("simclr", cfg.data)
    optimizer = build_optimizer("sgd", model.parameters(), pc.lr, pc.weight_decay, pc.momentum)
    lrs = cosine_schedule(pc.lr, pc.epochs, pc.lr_decay_rate, pc.warmup_epochs)
    state = Resumable(run, "pretext", fingerprint(cfg, "pretext"), cfg.to_dict(), {"model": model, "optimizer": optimizer})
    if state.restore():
        echo(f"pretext: resuming after epoch {state.epoch}/{pc.epochs}")
    steps = max(1, len(images) // pc.batch_size)
    for epoch in range(state.epoch, pc.epochs):
        start = time.perf_counter()
        set_lr(optimizer, lrs[epoch])
        model.train()
        total, count = 0.0, 0
        batches = image_batches(images, shuffled_batches(len(images), pc.batch_size, device), device, cfg.runtime.workers)
        for idx, batch in progress(batches, steps, f"pretext {epoch + 1}"):
            z = forward(torch.cat([view(batch), view(batch)]))
            loss = nt_xent(z[: len(idx)], z[len(idx):], pc.temperature)
            check_finite(loss, "pretext", epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item(), count + 1
        record = {"epoch": epoch + 1, "loss": total / count, "lr": lrs[epoch], "seconds": time.perf_counter() - start}
        state.history.append(record)
        state.epoch = epoch + 1
        state.save()
        echo(f"pretext epoch {epoch + 1}/{pc.epochs}  loss {record['loss']:.4f}  lr {record['lr']:.4g}  {record['seconds']:.1f}s")
    save_pretext_model(run, model)
    return {"final_loss": state.history[-1]["loss"] if state.history else None}
