"""Data sources: a registry of loaders that each yield uint8 N×C×H×W train/test images at the
preset's base resolution, with optional integer labels (used by evaluation only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from scan.config import DataConfig
from scan.errors import ScanError


@dataclass
class ImageSplits:
    """Train and test images of one dataset.

    train, test: uint8 tensors N×C×H×W. Labels: int64 tensors N, or None when unknown.
    An image's id is its position in the source's own order.
    """

    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    classes: list[str] | None = None

    def images(self, split: str) -> torch.Tensor:
        return {"train": self.train, "test": self.test}[split]

    def labels(self, split: str) -> torch.Tensor | None:
        return {"train": self.train_labels, "test": self.test_labels}[split]


def conform(images: np.ndarray | torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """Bring images to the base resolution and channel count of a preset.

    images: uint8 N×H×W, N×H×W×C (C = 1, 3 or 4) or N×C×H×W tensor already channel-first.
    Returns uint8 N×channels×size×size. Grey becomes RGB by repetition, RGB becomes grey with
    ITU-R 601 weights, alpha is dropped; other sizes are resized with antialiased bilinear.
    """
    x = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8:
        raise ScanError(f"images must be uint8 (0-255), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    elif x.ndim != 4:
        raise ScanError(f"images must be N×H×W or N×H×W×C, got shape {tuple(x.shape)}")
    x = x[:, :3]
    if x.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        x = (x.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = _resize(x, size)
    return x.contiguous()


def _resize(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 N×C×H×W to size×size in chunks, so memory stays bounded for large N."""
    parts = []
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        parts.append(part.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(parts)


def load_digits_source(cfg: DataConfig) -> ImageSplits:
    """scikit-learn's 8×8 handwritten digits (1,797 images, shipped with scikit-learn).

    Pixel values 0–16 are stored as uint8 round(v·255/16). The split is a fixed stratified
    80 % / 20 % one (random_state 0), identical on every machine.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(index, test_size=0.2, stratify=digits.target, random_state=0)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return ImageSplits(
        train=conform(images[train_idx], cfg.size, cfg.channels),
        test=conform(images[test_idx], cfg.size, cfg.channels),
        train_labels=labels[train_idx],
        test_labels=labels[test_idx],
        classes=[str(c) for c in digits.target_names],
    )


NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz_source(cfg: DataConfig) -> ImageSplits:
    """An .npz with x_train, y_train, x_test, y_test (and optional classes); images uint8
    N×H×W or N×H×W×C, labels integers."""
    if cfg.path is None:
        raise ScanError("the npz source needs a file: pass --data FILE.npz")
    path = Path(cfg.path)
    if not path.is_file():
        raise ScanError(f"--data {path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ScanError(f"--data {path}: not a readable .npz file ({err})") from None
    with archive:
        missing = [name for name in NPZ_ARRAYS if name not in archive.files]
        if missing:
            raise ScanError(f"--data {path}: missing array(s) {', '.join(missing)} (needs {', '.join(NPZ_ARRAYS)})")
        arrays = {name: archive[name] for name in NPZ_ARRAYS}
        classes = [str(c) for c in archive["classes"]] if "classes" in archive.files else None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise ScanError(f"--data {path}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ScanError(f"--data {path}: y_{split} must be a 1-D integer array")
    return ImageSplits(
        train=conform(arrays["x_train"], cfg.size, cfg.channels),
        test=conform(arrays["x_test"], cfg.size, cfg.channels),
        train_labels=torch.as_tensor(arrays["y_train"], dtype=torch.int64),
        test_labels=torch.as_tensor(arrays["y_test"], dtype=torch.int64),
        classes=classes,
    )


SOURCES: dict[str, Callable[[DataConfig], ImageSplits]] = {
    "digits": load_digits_source,
    "npz": load_npz_source,
}


def load_source(cfg: DataConfig) -> ImageSplits:
    """Look up `cfg.source` in the registry and load it."""
    if cfg.source not in SOURCES:
        raise ScanError(f"unknown data source {cfg.source!r}; valid sources: {', '.join(SOURCES)}")
    return SOURCES[cfg.source](cfg)
