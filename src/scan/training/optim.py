"""Optimisers and the precomputed learning-rate schedule of the original configs."""

from __future__ import annotations

import math

import torch


def build_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """SGD (momentum, no Nesterov) or Adam, as the original configs use them."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def cosine_schedule(base_lr: float, epochs: int, decay_rate: float = 0.1, warmup_epochs: int = 0) -> list[float]:
    """Per-epoch learning rates: the original's cosine from lr to eta_min = lr·decay_rate³
    (utils/common_config.py::adjust_learning_rate), after an optional linear warm-up."""
    eta_min = base_lr * decay_rate**3
    lrs = []
    for e in range(epochs):
        if e < warmup_epochs:
            lrs.append(base_lr * (e + 1) / warmup_epochs)
        else:
            t = (e - warmup_epochs) / max(1, epochs - warmup_epochs)
            lrs.append(eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t)) / 2)
    return lrs


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
