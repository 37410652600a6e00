"""The `folder` source: any directory of images, decoded once to uint8 at the base resolution.

Layout: images anywhere below the folder (searched recursively; .jpg .jpeg .png .bmp .gif .webp
.tif .tiff, any case; other files and hidden files or folders are ignored). When every image sits
in a first-level sub-folder and there are at least two of them, those sub-folders are the classes
(sorted by name; label = position), used by evaluation only.

A folder has no test split of its own: train and test are the same images, unless a test
fraction is asked for (a seeded split, stratified when there are labels).

The decoded images stay in the on-disk cache (scan.data.decode) until the pipeline loads them
into memory, or streams them when they do not fit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from scan.config import DataConfig
from scan.data.decode import IMAGE_EXTENSIONS, decode_cached, is_image_file
from scan.data.splits import ImageSplits, take
from scan.data.stream import cpu_workers
from scan.errors import ScanError

LABEL_MODES = ("auto", "none")


def list_images(folder: Path) -> list[str]:
    """Paths (relative, '/'-separated) of the image files below `folder`, sorted by their path
    components. Hidden files and folders (name starting with '.') are skipped, such as macOS
    '._x.jpg' resource forks; symbolic links to folders are followed, each real folder once."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a link cycle or a second link to a folder
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(folder)
        for name in filenames:
            if not name.startswith(".") and is_image_file(name) and os.path.isfile(os.path.join(dirpath, name)):
                found.append((rel_dir / name).as_posix())
    return sorted(found, key=lambda rel: rel.split("/"))


def folder_labels(ids: list[str]) -> tuple[torch.Tensor, list[str]] | None:
    """Labels from first-level sub-folder names: (int64 N, sorted class names), or None unless
    every image sits in a sub-folder and there are at least two sub-folders."""
    parts = [rel.split("/") for rel in ids]
    if not parts or any(len(p) < 2 for p in parts):
        return None
    classes = sorted({p[0] for p in parts})
    if len(classes) < 2:
        return None
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[p[0]] for p in parts], dtype=torch.int64), classes


def split_indices(n: int, labels: torch.Tensor | None, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/test split of n items: round(test_fraction·count) of each class (of all
    items when unlabelled) go to test. Returns sorted (train, test) index arrays."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels.numpy() == c) for c in labels.unique().tolist()]
    test: list[np.ndarray] = []
    for group in groups:
        take = math.floor(test_fraction * len(group) + 0.5)
        test.append(rng.permutation(group)[:take])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(n), test_idx)
    if len(test_idx) == 0 or len(train_idx) == 0:
        raise ScanError(f"data.test_fraction={test_fraction} leaves {len(train_idx)} train and "
                        f"{len(test_idx)} test images of {n}; choose a fraction that leaves both")
    return train_idx, test_idx


def load_folder(path: str | Path, size: int, channels: int, labels: bool = True,
                test_fraction: float = 0.0, seed: int = 0, crop: float = 1.0) -> ImageSplits:
    """Load an image folder as uint8 N×channels×size×size (short side resized to `size`, centre
    crop; DiskImages over the decode cache), ids = relative paths in sorted order.

    labels: detect labels from sub-folders (see the module docstring); False: no labels.
    test_fraction: 0 -> train and test are the same images (the same tensor); in (0, 1) -> that
        share of the images (of each class when labelled) is held out as test, chosen with `seed`.
    crop: share of each file's short side kept by the centre crop (a pretrained model's crop_pct).
    Unreadable, truncated or empty image files are skipped with one warning and listed in
    `skipped`. Decoded pixels are cached (see scan.data.decode), so only the first load decodes.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ScanError(f"--data {path}: {'not a folder' if folder.exists() else 'no such folder'}")
    if not 0.0 <= test_fraction < 1.0:
        raise ScanError(f"data.test_fraction must be in [0, 1), got {test_fraction}")
    files = list_images(folder)
    if not files:
        raise ScanError(f"--data {path}: no image files in the folder or its sub-folders "
                        f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    decoded = decode_cached(folder, files, size, channels, crop=crop, workers=cpu_workers(4), what="data")
    if not decoded.ids:
        raise ScanError(f"--data {path}: none of the {len(files)} image files could be read (first: {files[0]})")
    found = folder_labels(decoded.ids) if labels else None
    y, classes = found if found is not None else (None, None)
    if test_fraction == 0.0:
        return ImageSplits(train=decoded.images, test=decoded.images, train_labels=y, test_labels=y,
                           classes=classes, train_ids=decoded.ids, test_ids=decoded.ids, skipped=decoded.skipped)
    train_idx, test_idx = split_indices(len(decoded.ids), y, test_fraction, seed)
    pick = torch.from_numpy
    return ImageSplits(
        train=take(decoded.images, train_idx), test=take(decoded.images, test_idx),
        train_labels=None if y is None else y[pick(train_idx)],
        test_labels=None if y is None else y[pick(test_idx)],
        classes=classes,
        train_ids=[decoded.ids[i] for i in train_idx], test_ids=[decoded.ids[i] for i in test_idx],
        skipped=decoded.skipped,
    )


def load_folder_source(cfg: DataConfig) -> ImageSplits:
    """The registry entry: `data.path` is the folder. Reads the optional `data.labels`
    (auto|none) and `data.test_fraction` settings when the config has them; the split seed is
    fixed (0), so the held-out images do not change with the run's seed."""
    if cfg.path is None:
        raise ScanError("the folder source needs a folder of images: pass --data DIR")
    labels = getattr(cfg, "labels", "auto")
    if labels not in LABEL_MODES:
        raise ScanError(f"data.labels must be one of {', '.join(LABEL_MODES)}; got {labels!r}")
    return load_folder(cfg.path, cfg.size, cfg.channels, labels=labels == "auto",
                       test_fraction=float(getattr(cfg, "test_fraction", 0.0)),
                       crop=float(getattr(cfg, "crop", 1.0)))
