"""Original-style training steps, written from the reference facts (shared/reference/
scan-original.md §1.1, §1.5, §2.1–2.3, §3.5), so that `benchmarks/stages.py --baseline` can time
them in the same run, on the same machine, with the same model as `scan`'s own steps:

- data: per-image PIL transforms in DataLoader workers (`AugmentedDataset`: two SimCLR views of an
  image; `NeighborsDataset`: a strongly augmented anchor and one of its neighbours), collated into
  batches; the original used 8 workers (here at most the CPUs available);
- SimCLR: the two views interleaved in one forward pass, the one-sided loss (view-1 anchors only);
- SCAN: anchors and neighbours in two forward passes, the heads' losses summed;
- the per-epoch passes the original adds: after every pretext epoch a kNN monitoring pass (the
  train split embedded without augmentation, then a weighted top-100 kNN of the test split against
  it); after every SCAN epoch a prediction pass over the validation split and its N×N similarity
  matrix.

The strong "ours" augmentation uses torchvision's RandAugment with 4 ops on PIL images, then
Cutout: the same kind of per-image PIL work as the original's 14-op list (which draws each op's
magnitude instead of one magnitude); it is a cost stand-in, not a re-implementation of its ops.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from scan.config import DataConfig


def simclr_transform(dc: DataConfig) -> Callable[[Image.Image], torch.Tensor]:
    """The original SimCLR augmentation (§3.1) as torchvision PIL transforms."""
    return T.Compose([
        T.RandomResizedCrop(dc.size, scale=tuple(dc.crop_scale)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(*dc.jitter)], p=dc.jitter_p),
        T.RandomGrayscale(p=dc.grayscale_p),
        T.ToTensor(),
        T.Normalize(dc.mean, dc.std),
    ])


def cutout(x: torch.Tensor, length: int) -> torch.Tensor:
    """One square hole of side randint(1, length) at a uniform centre, zeroed (§3.5)."""
    side = int(np.random.randint(1, length + 1))
    h, w = x.shape[1:]
    cy, cx = np.random.randint(h), np.random.randint(w)
    x[:, max(0, cy - side // 2):cy + side - side // 2, max(0, cx - side // 2):cx + side - side // 2] = 0
    return x


def strong_transform(dc: DataConfig) -> Callable[[Image.Image], torch.Tensor]:
    """Flip, random crop (no padding), 4 PIL ops, ToTensor, Normalize, Cutout (§3.5)."""
    return T.Compose([
        T.RandomHorizontalFlip(),
        T.RandomCrop(dc.size),
        T.RandAugment(num_ops=dc.strong_ops),
        T.ToTensor(),
        T.Normalize(dc.mean, dc.std),
        T.Lambda(lambda x: cutout(x, dc.cutout)),
    ])


def plain_transform(dc: DataConfig) -> Callable[[Image.Image], torch.Tensor]:
    return T.Compose([T.ToTensor(), T.Normalize(dc.mean, dc.std)])


class PILImages(torch.utils.data.Dataset):
    """uint8 N×C×H×W images served as PIL images (what the original's datasets hold), each item
    passed through `views` transforms (one tensor per view)."""

    def __init__(self, pool: torch.Tensor, views: list[Callable], neighbors: torch.Tensor | None = None) -> None:
        self.pool = pool.permute(0, 2, 3, 1).squeeze(-1).numpy()
        self.views, self.neighbors = views, neighbors

    def __len__(self) -> int:
        return len(self.pool)

    def _pil(self, i: int) -> Image.Image:
        return Image.fromarray(self.pool[i])

    def __getitem__(self, i: int):
        if self.neighbors is None:  # AugmentedDataset: the same transform, twice
            image = self._pil(i)
            return tuple(view(image) for view in self.views)
        j = int(self.neighbors[i, np.random.randint(self.neighbors.shape[1])])  # NeighborsDataset
        return self.views[0](self._pil(i)), self.views[0](self._pil(j))


def loader(dataset: torch.utils.data.Dataset, batch: int, workers: int, shuffle: bool = True, pin: bool = False):
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=shuffle, drop_last=shuffle,
                                       num_workers=workers, persistent_workers=workers > 0, pin_memory=pin)


def one_sided_simclr_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The original's SimCLR loss (§2.1): view-1 anchors only, contrasted with all 2B views but
    themselves; B terms."""
    b = z1.shape[0]
    contrast = torch.cat([z1, z2])
    logits = z1 @ contrast.T / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()
    logits[torch.arange(b), torch.arange(b)] = float("-inf")
    return F.cross_entropy(logits, torch.arange(b, 2 * b, device=z1.device))


def original_scan_loss(anchor: torch.Tensor, neighbor: torch.Tensor, entropy_weight: float) -> torch.Tensor:
    """The original's SCAN loss (§2.2): BCE of ⟨p, q⟩ against 1, minus λ·H(mean p)."""
    p, q = anchor.softmax(1), neighbor.softmax(1)
    consistency = F.binary_cross_entropy((p * q).sum(1).clamp(0, 1), torch.ones(len(p), device=p.device))
    mean = p.mean(0).clamp_min(1e-8)
    return consistency + entropy_weight * (mean * mean.log()).sum()


class Batches:
    """An endless iterator over a DataLoader (epochs chained), for the timing harness."""

    def __init__(self, data: torch.utils.data.DataLoader) -> None:
        self.data, self.it = data, iter(data)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.data)
            return next(self.it)


def simclr_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: Batches,
                temperature: float, device: torch.device) -> Callable[[], float]:
    """One original-style SimCLR step; returns the seconds spent waiting for the loader."""

    def step() -> float:
        start = time.perf_counter()
        v1, v2 = (v.to(device, non_blocking=True) for v in batches.next())
        waited = time.perf_counter() - start
        b = len(v1)
        z = model(torch.stack([v1, v2], 1).flatten(0, 1)).view(b, 2, -1)  # interleaved, one pass
        loss = one_sided_simclr_loss(z[:, 0], z[:, 1], temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return waited

    return step


def scan_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: Batches,
              entropy_weight: float, device: torch.device) -> Callable[[], float]:
    """One original-style SCAN step (two forward passes); returns the loader wait in seconds."""

    def step() -> float:
        start = time.perf_counter()
        anchors, neighbors = (v.to(device, non_blocking=True) for v in batches.next())
        waited = time.perf_counter() - start
        anchor_logits, neighbor_logits = model(anchors), model(neighbors)
        loss = sum(original_scan_loss(a, n, entropy_weight) for a, n in zip(anchor_logits, neighbor_logits))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return waited

    return step


@torch.no_grad()
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eval_images_per_s(model: torch.nn.Module, pool: torch.Tensor, dc: DataConfig, batch: int, workers: int,
                      images: int, device: torch.device) -> float:
    """Throughput of a no-augmentation pass (PIL -> tensor in workers, eval mode), as the
    original's memory-bank fill and validation predictions run."""
    model.eval()
    data = loader(PILImages(pool[:images], [plain_transform(dc)]), batch, workers, shuffle=False,
                  pin=device.type == "cuda")
    start = time.perf_counter()
    for (x,) in data:
        model(x.to(device, non_blocking=True))
    _sync(device)
    model.train()
    return images / (time.perf_counter() - start)


def knn_monitor_seconds(n_bank: int, n_query: int, dim: int, device: torch.device, k: int = 100) -> float:
    """The original's weighted kNN of the queries against the bank (top-100, votes exp(cos/τ))."""
    bank = F.normalize(torch.randn(n_bank, dim, device=device), dim=1)
    queries = F.normalize(torch.randn(n_query, dim, device=device), dim=1)
    _sync(device)
    start = time.perf_counter()
    for chunk in queries.split(1024):
        values, _ = (chunk @ bank.T).topk(k, dim=1)
        (values / 0.1).exp()
    _sync(device)
    return time.perf_counter() - start


def nxn_validation_seconds(n: int, clusters: int, heads: int, device: torch.device) -> float:
    """The original's validation consistency over an N×N similarity matrix (§2.3), per head."""
    probs = torch.rand(n, clusters, device=device).softmax(1)
    neighbors = torch.randint(n, (n, 6), device=device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(heads):
        similarity = probs @ probs.T
        F.binary_cross_entropy(similarity.gather(1, neighbors).clamp(0, 1), torch.ones(n, 6, device=device))
    _sync(device)
    return time.perf_counter() - start
