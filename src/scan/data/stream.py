"""Images larger than memory: a decoded uint8 array kept on disk (`DiskImages`) and read batch by
batch through DataLoader workers (`image_batches`), so every stage can train on it as it would on
an in-memory tensor.

The file sources decode each image once into an .npy file (scan.data.decode); `DiskImages` reads
rows of it through a memory map. Augmentation still runs batched on the training device: workers
only gather raw rows, so a streamed run sees the same pixels and draws the same random numbers as
an in-memory one. With runtime.workers=0 it gives exactly the same result; with workers, the
full-network SCAN step draws each batch's neighbours ahead of the augmentations of the batches
before it (they are prefetched), so that stage follows another, equally valid random stream.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch


# The largest share of a GPU's free memory that a dataset may take when moved there whole; the
# rest is for the model, its activations and the optimiser.
GPU_SHARE = 0.5
# Batches each worker reads ahead of the training step.
PREFETCH_BATCHES = 4


def cpu_workers(limit: int) -> int:
    """DataLoader workers: up to `limit`, no more than the CPUs this process may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(limit, cpus))


class DiskImages:
    """uint8 N×C×H×W images stored in an .npy file, read on demand.

    path: the .npy file (shape M×C×H×W, M ≥ N). rows: which of its rows, in order (default the
    first `length` rows, or all). Indexing with an int64 tensor, array or slice returns a uint8
    tensor on CPU; `load()` reads every row into memory.
    """

    def __init__(self, path: str | Path, rows: np.ndarray | None = None, length: int | None = None):
        self.path = Path(path)
        array = self._open()
        self.rows = np.arange(length if length is not None else len(array)) if rows is None else np.asarray(rows)
        if array.dtype != np.uint8 or array.ndim != 4 or (len(self.rows) and self.rows.max() >= len(array)):
            raise ValueError(f"{self.path} is not a uint8 N×C×H×W array with {len(self.rows)} rows")
        self.shape = torch.Size((len(self.rows), *array.shape[1:]))
        self._array: np.ndarray | None = None  # opened lazily in each process (workers too)

    def _open(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, index: torch.Tensor | np.ndarray | slice | int) -> torch.Tensor:
        if self._array is None:
            self._array = self._open()
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = self.rows[index]
        if np.ndim(rows) == 0:
            return torch.from_numpy(np.array(self._array[int(rows)]))
        # Read in file order (sequential on disk), then put back in the asked-for order.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        out[order] = self._array[rows[order]]
        return torch.from_numpy(out)

    def subset(self, index: np.ndarray) -> DiskImages:
        """The images at positions `index` (int array), still on disk."""
        return DiskImages(self.path, rows=self.rows[np.asarray(index)])

    def load(self) -> torch.Tensor:
        """All the images as one in-memory uint8 N×C×H×W tensor."""
        return self[np.arange(len(self))]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}  # a memory map is reopened, not pickled, in workers

    def __repr__(self) -> str:
        return f"DiskImages({str(self.path)!r}, {tuple(self.shape)})"


Images = torch.Tensor | DiskImages


def on_device(images: Images, device: torch.device) -> Images:
    """In-memory images moved to `device` when they fit in GPU_SHARE of its free memory (always on
    CPU); otherwise they stay where they are and each batch is indexed there and copied over, as
    images on disk are streamed."""
    if isinstance(images, DiskImages) or images.device == device:
        return images
    if device.type == "cuda" and images.numel() * images.element_size() > GPU_SHARE * torch.cuda.mem_get_info(device)[0]:
        return images
    return images.to(device)


class _Rows(torch.utils.data.Dataset):
    """Item: an index batch -> (that batch, its uint8 pixels)."""

    def __init__(self, images: DiskImages):
        self.images = images

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return index, self.images[index]


def image_batches(images: Images, index_batches: Iterable[torch.Tensor], device: torch.device,
                  workers: int = 4) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(index batch, uint8 B×C×H×W pixels on `device`) for each batch of `index_batches`.

    images: an in-memory tensor (indexed where it lives, so move it to `device` first when it
    fits there) or DiskImages, whose rows `workers` DataLoader processes read ahead of the consumer. Index
    batches are drawn lazily either way, so random draws between batches happen in the same order.
    """
    if not isinstance(images, DiskImages):
        for index in index_batches:
            yield index, images[index.to(images.device)].to(device)
        return
    workers = cpu_workers(workers)
    loader = torch.utils.data.DataLoader(
        _Rows(images), sampler=_cpu(index_batches), batch_size=None, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=PREFETCH_BATCHES if workers else None,
        # Its own generator: the iterator draws a worker seed, which must not shift the global
        # random stream that shuffling and augmentation draw from (workers use no randomness).
        generator=torch.Generator(),
    )
    for index, pixels in loader:
        yield index.to(device, non_blocking=True), pixels.to(device, non_blocking=True)


def _cpu(index_batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Index batches as CPU tensors (workers cannot receive CUDA tensors)."""
    for index in index_batches:
        yield index.cpu()
