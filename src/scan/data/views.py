"""Named augmented views configured from the data section: weak, simclr, local (multi-crop's
small SimCLR crops) and strong."""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from scan.config import DataConfig
from scan.data.augment import VIEWS


def simclr_side(cfg: DataConfig) -> int:
    """The side in pixels of the SimCLR views: data.size · data.simclr_size_ratio, rounded, at least 1."""
    return max(1, round(cfg.size * cfg.simclr_size_ratio))


def make_view(name: str, cfg: DataConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function uint8 B×C×H×W -> normalised float32 B×C×H×W for view `name` (B×C×s×s with
    s = simclr_side(cfg) for "simclr" and s = data.local_size for "local")."""
    colour = dict(hflip=cfg.hflip, jitter=tuple(cfg.jitter), jitter_p=cfg.jitter_p, grayscale_p=cfg.grayscale_p)
    options = {
        "weak": ("weak", {}),
        "simclr": ("simclr", dict(crop_scale=tuple(cfg.crop_scale), size=simclr_side(cfg), **colour)),
        "local": ("simclr", dict(crop_scale=tuple(cfg.local_crop_scale), size=cfg.local_size, **colour)),
        "strong": ("strong", dict(hflip=cfg.hflip, num_ops=cfg.strong_ops, cutout=cfg.cutout)),
    }
    view, kwargs = options[name]
    return partial(VIEWS[view], mean=cfg.mean, std=cfg.std, **kwargs)
