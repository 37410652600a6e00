"""Stage 4, selflabel: confident predictions on weak views become targets for strong views."""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn

from scan.checkpoint import RunDir
from scan.config import RunConfig, fingerprint
from scan.console import echo, progress
from scan.data.sources import ImageSplits
from scan.data.stream import image_batches, on_device
from scan.data.views import make_view
from scan.losses import confidence_ce
from scan.stages.artifacts import load_clustering_model, require, save_clustering_model
from scan.train import Resumable, Runtime, build_optimizer, check_finite, shuffled_batches


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay·ema + (1−decay)·model for parameters; buffers (BN statistics) are copied.
    The live model keeps training on its own weights (the original overwrote them every step)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def run_selflabel(cfg: RunConfig, run: RunDir, data: ImageSplits, device: torch.device) -> dict:
    """Fine-tune the selected cluster head and backbone; write selflabel/model.safetensors."""
    require(run, "cluster", "selflabel")
    sc = cfg.selflabel
    images = on_device(data.train, device)
    weak, strong = make_view("weak", cfg.data), make_view(sc.augment, cfg.data)
    model, head = load_clustering_model(run, "cluster")
    model.keep_head(head)
    model.to(device)
    forward = Runtime.from_config(cfg.runtime, device).wrap(model)
    optimizer = build_optimizer(sc.optimizer, model.parameters(), sc.lr, sc.weight_decay, sc.momentum)
    modules: dict = {"model": model, "optimizer": optimizer}
    ema = copy.deepcopy(model) if sc.ema > 0 else None
    if ema is not None:
        modules["ema"] = ema
    state = Resumable(run, "selflabel", fingerprint(cfg, "selflabel"), cfg.to_dict(), modules)
    if state.restore():
        echo(f"selflabel: resuming after epoch {state.epoch}/{sc.epochs}")

    steps = max(1, len(images) // sc.batch_size)
    for epoch in range(state.epoch, sc.epochs):
        start = time.perf_counter()
        model.train()
        total, used, skipped, confident, seen = 0.0, 0, 0, 0, 0
        batches = image_batches(images, shuffled_batches(len(images), sc.batch_size, device), device, cfg.runtime.workers)
        for idx, batch in progress(batches, steps, f"selflabel {epoch + 1}"):
            # Train-mode BN on the weak pass, as in the original (its statistics update too).
            with torch.no_grad():
                weak_logits = forward(weak(batch))[0]
            result = confidence_ce(weak_logits, forward(strong(batch))[0], sc.threshold, sc.class_balance)
            confident, seen = confident + result.confident, seen + len(idx)
            if result.loss is None:
                skipped += 1
                continue
            check_finite(result.loss, "selflabel", epoch)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            optimizer.step()
            if ema is not None:
                ema_update(ema, model, sc.ema)
            total, used = total + result.loss.item(), used + 1
        record = {"epoch": epoch + 1, "loss": total / used if used else None, "confident": confident / seen,
                  "skipped_batches": skipped, "seconds": time.perf_counter() - start}
        state.history.append(record)
        state.epoch = epoch + 1
        state.save()
        loss_text = f"{record['loss']:.4f}" if used else "n/a"
        echo(f"selflabel epoch {epoch + 1}/{sc.epochs}  loss {loss_text}  confident {record['confident']:.3f}"
             f"  skipped batches {skipped}  {record['seconds']:.1f}s")
    final = ema if ema is not None else model
    save_clustering_model(run, "selflabel", final, cfg, head=0)
    return {"skipped_batches": sum(r["skipped_batches"] for r in state.history)}
