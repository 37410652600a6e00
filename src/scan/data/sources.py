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

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scan.config import DataConfig
from scan.data import arrays, folder, imagenet, torchvision_sources
from scan.console import echo
from scan.data.decode import check_memory, fits_in_memory
from scan.data.splits import CHANNEL_COUNTS, ImageSplits, conform
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


def npz_members(path: Path, archive: np.lib.npyio.NpzFile) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array in an .npz, read from the .npy headers without inflating the
    data. A member whose data is shorter than its header declares is a ScanError."""
    members = {}
    for info in archive.zip.infolist():
        name = info.filename.removesuffix(".npy")
        with archive.zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if info.file_size < declared:
                raise ScanError(f"--data {path}: array {name} declares {shape} {dtype} "
                                f"({declared:,} bytes) but holds {info.file_size:,}; the file is damaged")
        members[name] = (shape, dtype)
    return members


def load_npz_source(cfg: DataConfig) -> ImageSplits:
    """An .npz with x_train, y_train, x_test, y_test (and optional classes); images uint8
    N×H×W or N×H×W×C (C = 1, 3, or 4 with alpha dropped), labels integers in 0..C−1 where C is
    the number of `classes` (any value ≥ 0 without them). The arrays' declared sizes are checked
    against the memory available before any is inflated."""
    if cfg.path is None:
        raise ScanError("the npz source needs a file: pass --data FILE.npz")
    path = Path(cfg.path)
    if not path.is_file():
        raise ScanError(f"--data {path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive of named arrays")
        with archive:
            members = npz_members(path, archive)
            missing = [name for name in NPZ_ARRAYS if name not in members]
            if missing:
                raise ScanError(f"--data {path}: missing array(s) {', '.join(missing)} (needs {', '.join(NPZ_ARRAYS)})")
            wanted = [*NPZ_ARRAYS, *(["classes"] if "classes" in members else [])]
            check_memory(sum(int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                             for shape, dtype in (members[n] for n in wanted)), f"--data {path}")
            arrays = {name: archive[name] for name in wanted}
    except ScanError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise ScanError(f"--data {path}: not a readable .npz file ({err})") from None
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in CHANNEL_COUNTS):
            raise ScanError(f"--data {path}: x_{split} must be N×H×W or N×H×W×C with C = 1, 3 or 4 "
                            f"(RGBA, alpha dropped); got shape {x.shape}")
        if len(x) != len(y):
            raise ScanError(f"--data {path}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ScanError(f"--data {path}: y_{split} must be a 1-D integer array")
        if len(y) and (y.min() < 0 or (classes is not None and y.max() >= len(classes))):
            bound = f"0..{len(classes) - 1} (one per name in classes)" if classes is not None else ">= 0"
            raise ScanError(f"--data {path}: y_{split} holds labels from {y.min()} to {y.max()}; they must be "
                            f"{bound}")
    return ImageSplits(
        train=conform(arrays["x_train"], cfg.size, cfg.channels, channels_last=True),
        test=conform(arrays["x_test"], cfg.size, cfg.channels, channels_last=True),
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
    data = SOURCES[cfg.source](cfg)
    data.identity()  # of the images as the source gives them, wherever they are read from later
    return place_images(data, stream)


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
