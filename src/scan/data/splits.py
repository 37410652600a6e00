"""The one image representation every data source yields (`ImageSplits`), and `conform`, which
brings any uint8 image array to a preset's base resolution and channel count.

This module sits below every source module (`sources`, `folder`, `imagenet`,
`torchvision_sources`), so they can share it without importing each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from scan.data.stream import DiskImages, Images
from scan.errors import ScanError


@dataclass
class ImageSplits:
    """Train and test images of one dataset.

    train, test: uint8 N×C×H×W images at the preset's base resolution: tensors, or DiskImages
        (the file sources' decode cache) until `in_memory()` loads them.
    train_labels, test_labels: int64 tensors N, or None when unknown (labels are for evaluation only).
    classes: class names in label order, or None.
    train_ids, test_ids: a stable id per image (a file path relative to the dataset folder), or
        None, which means an image's id is its position in the split.
    pretext: extra uint8 M×C×H×W images that only the pretext stage trains on (STL-10's 100,000
        unlabelled images); None means the pretext stage uses `train` alone. Read it through
        `pretext_images()`, which also loads sources that supply the extra images lazily.
    pretext_loader: returns the extra pretext images on demand, for sources where holding them in
        memory for the whole run would be wasteful; used only when `pretext` is None.
    skipped: files that were found but could not be decoded (paths relative to the dataset
        folder), so the run can record them.
    fingerprint: what `identity()` returned, kept when the images are read into memory.
    """

    train: Images
    test: Images
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    classes: list[str] | None = None
    train_ids: list[str] | None = None
    test_ids: list[str] | None = None
    pretext: torch.Tensor | None = None
    pretext_loader: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    skipped: list[str] = field(default_factory=list)
    fingerprint: dict | None = field(default=None, repr=False, compare=False)

    def identity(self) -> dict:
        """What identifies these images, so a run can tell that its data changed: the number of
        train and test images and a digest of them. Images on disk are named by their decode
        cache file (its name is a hash of the file list, sizes and modification times) and rows;
        images in memory by a blake2b hash of their bytes. Labels are not part of it (they change
        evaluation only, which always reruns); the pretext-only images are when held in memory."""
        if self.fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            parts = [self.train] if self.test is self.train else [self.train, self.test]
            parts += [self.pretext] if self.pretext is not None else []
            for images in parts:
                _hash_images(digest, images)
            self.fingerprint = {"train": len(self.train), "test": len(self.test), "digest": digest.hexdigest()}
        return self.fingerprint

    def images(self, split: str) -> Images:
        return {"train": self.train, "test": self.test}[split]

    def labels(self, split: str) -> torch.Tensor | None:
        return {"train": self.train_labels, "test": self.test_labels}[split]

    def ids(self, split: str) -> list[str]:
        """One id per image of `split`: its relative file path, or its position as a string."""
        ids = {"train": self.train_ids, "test": self.test_ids}[split]
        return ids if ids is not None else [str(i) for i in range(len(self.images(split)))]

    def pretext_images(self) -> torch.Tensor:
        """uint8 (N+M)×C×H×W: the train images followed by the pretext-only ones, or `train` alone.

        A lazily supplied set is loaded on each call and not kept, so its memory is freed once the
        pretext stage is done with it.
        """
        extra = self.pretext
        if extra is None and self.pretext_loader is not None:
            extra = self.pretext_loader()
        if extra is None or len(extra) == 0:
            return self.train
        if isinstance(self.train, DiskImages):
            raise ScanError("pretext-only images cannot be added to streamed train images")
        return torch.cat([self.train, extra])

    @property
    def nbytes(self) -> int:
        """Bytes of train and test pixels (counted once when they are the same images)."""
        train = _nbytes(self.train)
        return train if self.test is self.train else train + _nbytes(self.test)

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, DiskImages) or isinstance(self.test, DiskImages)

    def in_memory(self) -> ImageSplits:
        """These splits with images on disk read into memory (train and test stay one tensor
        when they are the same images)."""
        if not self.streamed:
            return self
        identity = self.identity()  # of the files on disk, so it does not depend on where they are read
        train = _load(self.train)
        test = train if self.test is self.train else _load(self.test)
        return dataclasses.replace(self, train=train, test=test, fingerprint=identity)


def _hash_images(digest, images: Images) -> None:
    digest.update(repr(tuple(images.shape)).encode())
    if isinstance(images, DiskImages):
        digest.update(images.path.name.encode())
        digest.update(np.ascontiguousarray(images.rows, dtype=np.int64).tobytes())
    else:
        digest.update(images.detach().cpu().contiguous().numpy().tobytes())


def _load(images: Images) -> torch.Tensor:
    return images.load() if isinstance(images, DiskImages) else images


def _nbytes(images: Images) -> int:
    return images.nbytes if isinstance(images, DiskImages) else images.numel()


def take(images: Images, index: np.ndarray) -> Images:
    """The images at positions `index` (int array): a tensor or, for DiskImages, a view on disk."""
    return images.subset(index) if isinstance(images, DiskImages) else images[torch.from_numpy(index)]


# Channel counts an image array may have: grey, RGB, RGBA (alpha dropped).
CHANNEL_COUNTS = (1, 3, 4)


def conform(images: np.ndarray | torch.Tensor, size: int, channels: int, channels_last: bool | None = None) -> torch.Tensor:
    """Bring images to the base resolution and channel count of a preset.

    images: uint8 N×H×W, N×H×W×C (C = 1, 3 or 4) or N×C×H×W tensor already channel-first.
    Returns uint8 N×channels×size×size. Grey becomes RGB by repetition, RGB becomes grey with
    ITU-R 601 weights, alpha (C = 4, RGBA) is dropped; other sizes are resized with antialiased
    bilinear. Any other channel count (2, or 5 and more) is a ScanError.
    channels_last: 4-D arrays are N×H×W×C (True), N×C×H×W (False), or either, told apart by
        which axis has a valid channel count (None; N×C×H×W when both do).
    """
    x = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8:
        raise ScanError(f"images must be uint8 (0-255), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and (channels_last or (channels_last is None and x.shape[-1] in CHANNEL_COUNTS
                                                  and x.shape[1] not in CHANNEL_COUNTS)):
        x = x.permute(0, 3, 1, 2)
    elif x.ndim != 4 or x.shape[1] not in CHANNEL_COUNTS:
        raise ScanError(f"images must be N×H×W, N×H×W×C or N×C×H×W with C = 1 (grey), 3 (RGB) or 4 "
                        f"(RGBA, alpha dropped); got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < 1:
        raise ScanError(f"images must be at least 1×1 pixels; got shape {tuple(x.shape)}")
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
