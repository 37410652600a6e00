"""Images given as arrays (`scan.SCAN().fit(X)`, `model.predict(X)`): brought to a model's square
input the way image files are (`scan.data.decode.decode_image`): the centred square of
`crop`·short side, resized to size×size. Non-square arrays are cropped, never squashed.

The `array` data source reads such an array, stored as an unlabelled .npy (uint8 N×H×W or
N×H×W×C), as both the train and the test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scan.config import DataConfig
from scan.data.splits import ImageSplits, conform
from scan.errors import ScanError


def as_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """uint8 images as they are; float images in [0, 1] scaled to 0-255 and rounded; anything
    else (other dtypes, floats outside [0, 1], NaN) a ScanError that says what is accepted."""
    dtype = images.dtype
    if dtype in (np.uint8, torch.uint8):
        return images
    is_float = images.is_floating_point() if isinstance(images, torch.Tensor) else np.issubdtype(dtype, np.floating)
    if not is_float:
        raise ScanError(f"images must be uint8 (0-255) or float in [0, 1], got {dtype}")
    x = torch.as_tensor(images).double()
    if x.numel() and not (torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise ScanError("float images must lie in [0, 1] (or pass uint8 0-255)")
    x = (x * 255).round().to(torch.uint8)
    return x.numpy() if isinstance(images, np.ndarray) else x


def center_square(images: np.ndarray | torch.Tensor, crop: float = 1.0) -> torch.Tensor:
    """The centred square of side round(crop·short side) of uint8 images N×H×W, N×H×W×C or
    N×C×H×W (channel-first when dim 1 has 1, 3 or 4 entries and the last does not, as `conform`
    reads them). Returns a uint8 tensor in the same layout. An odd margin leaves the extra
    pixel on the right/bottom, where the file path's sub-pixel box would split it."""
    x = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    channel_last = x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)
    h_dim, w_dim = (1, 2) if x.ndim == 3 or channel_last else (2, 3)
    if x.ndim not in (3, 4):
        raise ScanError(f"images must be N×H×W or N×H×W×C, got shape {tuple(x.shape)}")
    h, w = x.shape[h_dim], x.shape[w_dim]
    side = max(1, round(min(h, w) * crop))
    top, left = (h - side) // 2, (w - side) // 2
    return x.narrow(h_dim, top, side).narrow(w_dim, left, side)


def prepare_images(images: np.ndarray | torch.Tensor, size: int, channels: int, crop: float = 1.0) -> torch.Tensor:
    """uint8 images of any size and layout `conform` reads -> uint8 N×channels×size×size, by
    the centred square of crop·short side, resized (as files are decoded). Float images in
    [0, 1] are accepted too."""
    return conform(center_square(as_uint8(images), crop), size, channels)


def load_array_source(cfg: DataConfig) -> ImageSplits:
    """An unlabelled uint8 .npy (N×H×W or N×H×W×C) as both train and test split."""
    try:
        array = np.load(Path(cfg.path or ""), allow_pickle=False)
    except (OSError, ValueError) as err:  # missing (None included) or not an .npy
        raise ScanError(f"the array source reads data.path=FILE.npy; {cfg.path}: {err}") from None
    images = prepare_images(array, cfg.size, cfg.channels)
    return ImageSplits(train=images, test=images)
