"""Data sources: one registry (`SOURCES`) of loaders that each yield uint8 N×C×H×W train/test
images at the preset's base resolution, with stable ids and optional integer labels (used by
evaluation only).

    digits                 scikit-learn's 8×8 digits (shipped, no download)
    npz                    an .npz with x_train, y_train, x_test, y_test [, classes]
    folder                 any folder of images (scan.data.folder)
    mnist, cifar10, cifar100, cifar20, stl10
                           torchvision datasets, downloaded into a dataset root (scan.data.torchvision_sources)
    imagenet, imagenet_50, imagenet_100, imagenet_200
                           an ImageNet folder (scan.data.imagenet)

`ImageSplits` and `conform` live in scan.data.splits and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scan.config import DataConfig
from scan.data import arrays, folder, imagenet, torchvision_sources
from scan.console import echo
from scan.data.decode import check_memory, fits_in_memory
from scan.data.splits import ImageSplits, conform
from scan.errors import ScanError


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


@dataclass(frozen=True)
class Source:
    """A registered data source.

    load: reads the images for a DataConfig.
    reads_dir: `data.path` names a directory the source reads (a dataset root it may download
        into, or an image folder), so `--data DIR` sets that path and keeps the source.
    """

    load: Callable[[DataConfig], ImageSplits]
    reads_dir: bool = False

    def __call__(self, cfg: DataConfig) -> ImageSplits:
        return self.load(cfg)


SOURCES: dict[str, Source] = {
    "digits": Source(load_digits_source),
    "npz": Source(load_npz_source),
    "array": Source(arrays.load_array_source),  # scan.SCAN().fit(X): X stored as an unlabelled .npy
    "folder": Source(folder.load_folder_source, reads_dir=True),
    **{name: Source(load, reads_dir=True) for name, load in torchvision_sources.LOADERS.items()},
    **{name: Source(load, reads_dir=True) for name, load in imagenet.LOADERS.items()},
}


def load_source(cfg: DataConfig, stream: bool | str = "auto") -> ImageSplits:
    """Look up `cfg.source` in the registry and load it; a file source's images are then placed
    in memory or left on disk to be streamed (see `place_images`; `stream` is runtime.stream)."""
    if cfg.source not in SOURCES:
        raise ScanError(f"unknown data source {cfg.source!r}; valid sources: {', '.join(SOURCES)}")
    return place_images(SOURCES[cfg.source](cfg), stream)


def place_images(data: ImageSplits, stream: bool | str) -> ImageSplits:
    """Read a file source's decoded images into memory, or leave them on disk to be streamed:
    stream=auto streams when they do not fit in memory (the decision is logged), True always,
    False never (a ScanError when they do not fit)."""
    if not data.streamed:
        if stream is True:
            echo("data: runtime.stream=true has no effect: this source's images are in memory already")
        return data
    size = f"{data.nbytes / 2**30:.2f} GiB"
    if stream is True or (stream == "auto" and not fits_in_memory(data.nbytes)):
        echo(f"data: streaming the decoded images ({size}) from the decode cache through DataLoader workers")
        return data
    check_memory(data.nbytes, "the decoded images", remedy="leave runtime.stream at auto (or true) to stream them from disk")
    return data.in_memory()


def data_path_settings(source: str, path: str) -> dict[str, str]:
    """The data settings that `--data PATH` stands for, given the preset's source:

    - a file ending in .npz: the npz source reading it;
    - for a source that reads a directory (a benchmark's dataset root, an image folder): that
      directory, even if it does not exist yet (torchvision sources download into it), but not
      an existing file;
    - any other existing directory: the folder source reading it.
    Anything else is a one-line ScanError.
    """
    if Path(path).suffix == ".npz":
        return {"source": "npz", "path": path}
    where = Path(path).expanduser()
    spec = SOURCES.get(source)
    if spec is not None and spec.reads_dir and not (where.exists() and not where.is_dir()):
        return {"path": path}
    if where.is_dir():
        return {"source": "folder", "path": path}
    problem = "not a folder or an .npz file" if where.exists() else "no such folder or file"
    raise ScanError(f"--data {path}: {problem}; expected an image folder, a dataset root or an .npz file "
                    f"with x_train, y_train, x_test, y_test")
