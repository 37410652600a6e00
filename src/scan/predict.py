"""Apply an exported clustering model to images: `scan.load(RUN).predict(...)` in Python and
`scan predict RUN INPUT...` on the command line.

Images are prepared as in training, and arrays as files: files are decoded like the folder
source (upright, grey or RGB), and both take the centred square — of `crop`·short side for
ImageNet runs — resized to the base size (`scan.data.arrays.prepare_images` for arrays), then
are normalised with the run's mean and std. Arrays may be uint8 or float in [0, 1]. Loading
reads safetensors and JSON only, never a pickle.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TextIO

import numpy as np
import torch

from scan.checkpoint import RunDir
from scan.data.augment import weak_view
from scan.data.decode import decode_files
from scan.data.stream import DiskImages, Images, cpu_workers
from scan.data.folder import list_images
from scan.data.arrays import prepare_images
from scan.data.splits import conform
from scan.errors import ScanError
from scan.models.heads import ClusteringModel
from scan.rundir import warn_if_written
from scan.stages.artifacts import final_step, load_exported_model
from scan.training.batches import infer
from scan.training.context import resolve_device

# Files decoded per step of `predict_files`, in batches: bounds memory for any number of files.
FILES_PER_CHUNK = 2048
# Images per step of `assign`: bounds memory at CHUNK×K probabilities for any N.
ASSIGN_CHUNK = 8192


@dataclass
class Predictions:
    """Cluster assignments of N images.

    clusters: int64 N, the most probable cluster of each image.
    probs: float32 N×K, the softmax of the model's selected head (rows sum to 1).
    paths: the N files that were read, in input order (None when arrays were given).
    skipped: files that could not be read as images (not in `paths`, no row in `probs`).
    """

    clusters: torch.Tensor
    probs: torch.Tensor
    paths: list[str] | None = None
    skipped: list[str] = field(default_factory=list)


class ClusterModel:
    """An exported clustering model (backbone + its selected head) with the image preparation
    recorded in its sidecar.

    card: the model.json sidecar (backbone, in_channels, input_size, crop, mean, std,
        num_clusters, num_heads, head, and cluster_names once evaluation matched clusters to labels).
    """

    def __init__(self, model: ClusteringModel, card: dict, device: str | torch.device = "auto") -> None:
        self.card = card
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.backbone = model.backbone.to(self.device).eval()
        self.head = model.cluster_heads.heads[card["head"]].to(self.device).eval()
        self._view = partial(weak_view, mean=card["mean"], std=card["std"])

    @property
    def num_clusters(self) -> int:
        return int(self.card["num_clusters"])

    @property
    def cluster_names(self) -> list[str | None] | None:
        """The class each cluster was matched to by evaluation (None: unmatched), or None."""
        return self.card.get("cluster_names")

    def _prepare(self, images: torch.Tensor | np.ndarray | DiskImages) -> Images:
        """A run's own images (uint8 N×C×S×S, or DiskImages when streamed) as the model expects:
        at the base size already, so only the channel layout is checked (`conform`)."""
        if isinstance(images, DiskImages):
            return images
        return conform(images, self.card["input_size"], self.card["in_channels"])

    def prepare(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """New images — uint8 or float in [0, 1], N×H×W, N×H×W×C or N×C×H×W, any size — as the
        model expects (uint8 N×C×S×S): the centred square of crop·short side, resized, as image
        files are decoded."""
        return prepare_images(images, self.card["input_size"], self.card["in_channels"], self.card.get("crop", 1.0))

    def features(self, images: torch.Tensor | np.ndarray, batch_size: int = 256) -> torch.Tensor:
        """Backbone features of uint8 images (any layout `conform` accepts): float32 N×D on CPU."""
        return infer(self.backbone, self._prepare(images), self._view, batch_size, self.device).cpu()

    def probs(self, images: torch.Tensor | np.ndarray | DiskImages, batch_size: int = 256) -> torch.Tensor:
        """Cluster probabilities of uint8 images: float32 N×K on CPU."""
        return infer(self._softmax, self._prepare(images), self._view, batch_size, self.device).cpu()

    def _softmax(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float B×C×S×S -> B×K probabilities of the selected head (the others are unused)."""
        return self.head(self.backbone(x)).softmax(-1)

    def assign(self, images: torch.Tensor | np.ndarray, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(cluster int64 N, its probability float32 N) per image, never holding all N×K."""
        tops = [self.probs(images[s:s + ASSIGN_CHUNK], batch_size).max(1) for s in range(0, len(images), ASSIGN_CHUNK)]
        if not tops:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        return torch.cat([t.indices for t in tops]), torch.cat([t.values for t in tops])

    def predict(self, inputs: torch.Tensor | np.ndarray | str | Path | Sequence[str | Path],
                batch_size: int = 256) -> Predictions:
        """Clusters of images given as an array/tensor (uint8 or float in [0, 1]; N×H×W, N×H×W×C
        or N×C×H×W, any size; cropped and resized as files are, see `prepare`) or as image files and folders (searched recursively; unreadable files are skipped and
        listed in `skipped`)."""
        if isinstance(inputs, (torch.Tensor, np.ndarray)):
            probs = self.probs(self.prepare(inputs), batch_size)
            return Predictions(probs.argmax(1), probs)
        paths = find_images([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
        chunks = list(self.predict_files(paths, batch_size))
        probs = torch.cat([c.probs for c in chunks])
        return Predictions(probs.argmax(1), probs, [p for c in chunks for p in c.paths],
                           [p for c in chunks for p in c.skipped])

    def predict_files(self, paths: Sequence[str], batch_size: int = 256) -> Iterator[Predictions]:
        """Predictions for image files, FILES_PER_CHUNK files at a time (decoded by DataLoader
        workers), so any number of files fits in memory."""
        for start in range(0, len(paths), FILES_PER_CHUNK):
            chunk = list(paths[start:start + FILES_PER_CHUNK])
            images, ok = decode_files(chunk, self.card["input_size"], self.card["in_channels"],
                                      self.card.get("crop", 1.0), workers=cpu_workers(4))
            read = set(ok)
            probs = self.probs(images, batch_size) if ok else torch.zeros(0, self.num_clusters)
            yield Predictions(probs.argmax(1), probs, [chunk[i] for i in ok],
                              [p for i, p in enumerate(chunk) if i not in read])


def load(path: str | Path, device: str | torch.device = "auto") -> ClusterModel:
    """The clustering model of a run directory — its final step: the self-label model when that
    stage finished, else the SCAN model — or of a folder holding an exported model.safetensors
    and model.json. Reads safetensors and JSON only."""
    root = Path(path).expanduser()
    if (root / "model.json").is_file():
        folder = root
    elif (root / "config.yaml").is_file():
        run = RunDir(root)
        warn_if_written(run)
        folder = run.stage(final_step(run))
    elif root.exists():
        raise ScanError(f"{path} is neither a run directory nor a folder with model.json and model.safetensors")
    else:
        raise ScanError(f"{path}: no such run directory")
    model, card = load_exported_model(folder)
    return ClusterModel(model, card, device)


def find_images(inputs: Sequence[str | Path]) -> list[str]:
    """The image files that `inputs` name: files as given (any extension; unreadable ones are
    skipped when decoded), folders searched recursively for image files (scan.data.folder)."""
    paths: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            paths += [str(p / rel) for rel in list_images(p)]
        elif p.is_file():
            paths.append(str(item))
        else:
            raise ScanError(f"{item}: no such file or folder")
    if not paths:
        raise ScanError(f"no image files in {', '.join(map(str, inputs))}")
    return paths


def csv_header(top: int, named: bool) -> list[str]:
    """Columns of `scan predict`: path, cluster[, cluster_name], confidence, top-k clusters with probabilities."""
    ranked = [col for i in range(1, top + 1) for col in (f"top{i}", f"top{i}_prob")]
    return ["path", "cluster", *(["cluster_name"] if named else []), "confidence", *ranked]


def write_csv(chunks: Iterable[Predictions], out: TextIO, names: list[str | None] | None = None,
              top: int = 3, on_skip=None) -> int:
    """Write one CSV row per read image of `chunks` to `out` (header first); call on_skip(path)
    for each skipped file. Returns the number of rows."""
    writer = csv.writer(out, lineterminator="\n")
    rows = 0
    for i, chunk in enumerate(chunks):
        k = min(top, chunk.probs.shape[1])
        if i == 0:
            writer.writerow(csv_header(k, names is not None))
        for path in chunk.skipped:
            if on_skip is not None:
                on_skip(path)
        values, indices = chunk.probs.topk(k, dim=1)
        for path, cluster, vals, idx in zip(chunk.paths, chunk.clusters.tolist(), values.tolist(), indices.tolist()):
            name = [names[cluster] or ""] if names is not None else []
            ranked = [item for c, p in zip(idx, vals) for item in (c, f"{p:.6f}")]
            writer.writerow([path, cluster, *name, f"{vals[0]:.6f}", *ranked])
            rows += 1
    return rows
