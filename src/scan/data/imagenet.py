"""ImageNet (ILSVRC-2012) and the SCAN subsets ImageNet-50, -100 and -200.

Layout (the ImageFolder one; the original code's ILSVRC2012_img_train / ILSVRC2012_img_val
folder names are accepted too):

    ROOT/train/<wnid>/*.JPEG
    ROOT/val/<wnid>/*.JPEG      the 50,000 val images sorted into class folders

ROOT is `data.path` (`--data DIR`), by default ~/.cache/scan/datasets/imagenet. ImageNet cannot
be downloaded automatically (its licence needs a sign-in at image-net.org).

Classes: the subsets read their wnids from the package files scan/data/subsets/<name>.txt (one
wnid per line, sorted, optionally followed by a name; label = line index), which are the
original's lists (50 ⊂ 100 ⊂ 200); `imagenet` takes every class folder of train, sorted. The val
split is the test split.

Decoding: as the original (Resize(256) then a 224 crop), the centred square of 0.875 of the short
side is resized to data.size, i.e. Resize(round(size/0.875)) + CenterCrop(size): 256 -> 224 at
size 224. DataLoader workers decode into one preallocated uint8 array, cached once decoded (see
scan.data.decode: at 224 that is 150 KB per image on disk, about 10 GB for ImageNet-50 train).

ImageNet-1k at 224 is about 190 GB of uint8 pixels: more than memory holds, so the pipeline
streams it from the decode cache through DataLoader workers (scan.data.stream); the cache needs
that much free disk.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

import torch

from scan.config import DataConfig
from scan.data.decode import cache_root, decode_cached, is_image_file
from scan.data.splits import ImageSplits
from scan.data.stream import Images, cpu_workers
from scan.errors import ScanError

SUBSETS = ("imagenet_50", "imagenet_100", "imagenet_200")
# Share of the short side kept by the centre crop: the standard 224/256.
CROP = 0.875
SPLIT_FOLDERS = {"train": ("train", "ILSVRC2012_img_train"), "val": ("val", "ILSVRC2012_img_val")}


def read_class_list(subset: str) -> tuple[list[str], list[str]]:
    """(wnids, names) of a subset file, in file order (= label order). A line is
    'wnid [name ...]'; a line with no name uses the wnid as its name."""
    text = (resources.files("scan.data") / "subsets" / f"{subset}.txt").read_text(encoding="utf-8")
    wnids, names = [], []
    for line in text.splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            wnids.append(wnid)
            names.append(name.strip() or wnid)
    return wnids, names


def imagenet_root(cfg: DataConfig) -> Path:
    return Path(cfg.path).expanduser() if cfg.path is not None else cache_root() / "datasets" / "imagenet"


def split_folder(root: Path, split: str) -> Path:
    """ROOT/train or ROOT/val (or the original's ILSVRC2012_img_* names); ScanError if absent."""
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    raise ScanError(f"no ImageNet {split} folder in {root}: expected {root}/{split}/<wnid>/*.JPEG "
                    f"(get ILSVRC-2012 from image-net.org, then pass --data DIR)")


def list_split(root: Path, split: str, wnids: list[str]) -> tuple[list[str], list[int]]:
    """Files of `split` for the classes `wnids`: (paths relative to root, sorted within each
    class, classes in wnid order; labels = index in wnids)."""
    folder = split_folder(root, split)
    missing = [w for w in wnids if not (folder / w).is_dir()]
    if missing and split == "val" and len(missing) == len(wnids) and any(is_image_file(f) for f in os.listdir(folder)):
        raise ScanError(f"{folder} holds the val images unsorted; sort them into <wnid>/ class folders "
                        f"(as the standard valprep.sh does) and run again")
    if missing:
        raise ScanError(f"{folder}: {len(missing)} of {len(wnids)} class folders missing "
                        f"(e.g. {', '.join(missing[:3])}); expected {folder}/<wnid>/*.JPEG")
    files: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        names = sorted(f for f in os.listdir(folder / wnid) if is_image_file(f))
        files += [(folder / wnid / f).relative_to(root).as_posix() for f in names]
        labels += [label] * len(names)
    return files, labels


def load_imagenet(cfg: DataConfig, subset: str | None = None) -> ImageSplits:
    """ImageNet train (as train) and val (as test) for `subset` (None: all classes of train),
    uint8 N×C×size×size with labels, class names, ids = paths relative to ROOT."""
    name = subset or "imagenet"
    root = imagenet_root(cfg)
    if not root.is_dir():
        raise ScanError(f"{name}: no ImageNet folder at {root}; put train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
                        f"there, or pass --data DIR")
    if subset is not None:
        wnids, classes = read_class_list(subset)
    else:
        train_dir = split_folder(root, "train")
        wnids = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not wnids:
            raise ScanError(f"{train_dir}: no class folders; expected {train_dir}/<wnid>/*.JPEG")
        classes = list(wnids)
    listed = {split: list_split(root, split, wnids) for split in ("train", "val")}
    c, s = cfg.channels, cfg.size
    out: dict[str, tuple[Images, torch.Tensor, list[str]]] = {}
    skipped: list[str] = []
    for split, (files, labels) in listed.items():
        if not files:
            raise ScanError(f"{name}: no images in {split_folder(root, split)}/<wnid>/")
        decoded = decode_cached(root, files, s, c, crop=CROP, workers=cpu_workers(8), what=f"{name} {split}")
        if not decoded.ids:
            raise ScanError(f"{name}: none of the {len(files)} {split} images could be read (first: {files[0]})")
        label_of = dict(zip(files, labels))
        y = torch.tensor([label_of[rel] for rel in decoded.ids], dtype=torch.int64)
        out[split] = (decoded.images, y, decoded.ids)
        skipped += decoded.skipped
    (train, train_y, train_ids), (test, test_y, test_ids) = out["train"], out["val"]
    return ImageSplits(train=train, test=test, train_labels=train_y, test_labels=test_y, classes=classes,
                       train_ids=train_ids, test_ids=test_ids, skipped=skipped)


# Registry entries (see scan.data.sources.SOURCES).
LOADERS = {"imagenet": functools.partial(load_imagenet, subset=None)} | {
    subset: functools.partial(load_imagenet, subset=subset) for subset in SUBSETS
}
