"""Named augmented views configured from the data section: weak, simclr and strong."""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from scan.config import DataConfig
from scan.data.augment import VIEWS


def make_view(name: str, cfg: DataConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function uint8 B×C×H×W -> normalised float32 B×C×H×W for view `name`."""
    options = {
        "weak": {},
        "simclr": dict(crop_scale=tuple(cfg.crop_scale), hflip=cfg.hflip, jitter=tuple(cfg.jitter),
                       jitter_p=cfg.jitter_p, grayscale_p=cfg.grayscale_p),
        "strong": dict(hflip=cfg.hflip, num_ops=cfg.strong_ops, cutout=cfg.cutout),
    }
    return partial(VIEWS[name], mean=cfg.mean, std=cfg.std, **options[name])
