"""Index batches for training (one shuffled global batch at a time, each rank taking its share)
and batched inference over a whole split (each rank embedding its shard, gathered back in order)."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from scan.data.stream import Images, image_batches
from scan.distributed import shard
from scan.errors import ScanError
from scan.training.context import RunContext


def local_batch_size(ctx: RunContext, batch_size: int, what: str) -> int:
    """Each rank's share of a global batch; the global batch must split evenly across ranks."""
    if batch_size % ctx.world_size:
        raise ScanError(f"{what}={batch_size} is the global batch and must be a multiple of the "
                        f"{ctx.world_size} processes")
    return batch_size // ctx.world_size


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one pass over n samples (full batches only, at least one)."""
    return max(1, n // batch_size)


def shuffled_batches(ctx: RunContext, n: int, batch_size: int) -> Iterator[torch.Tensor]:
    """This rank's index batches of one epoch: a permutation of range(n) from the shuffle stream
    (the same on every rank), cut into global batches of `batch_size`, each split evenly across
    ranks. The last partial batch is dropped (as the original loaders do) unless that would leave
    no batch at all; then the one short batch is trimmed to split evenly."""
    order = torch.randperm(n, generator=ctx.shuffle).to(ctx.device)
    if n >= batch_size:
        stop = n - n % batch_size
    else:
        batch_size = stop = n - n % ctx.world_size
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size].chunk(ctx.world_size)[ctx.rank]


def anchor_neighbor_batches(ctx: RunContext, neighbors: torch.Tensor, batch_size: int,
                            include_self: bool = False) -> Iterator[torch.Tensor]:
    """Index batches for the SCAN step: this rank's b shuffled anchors followed by one of each
    anchor's neighbours (2b indices), drawn uniformly from the rank's own stream; with
    include_self, from the k neighbours and the anchor itself (the original's draw).
    neighbors: int64 N×k on the context's device."""
    for idx in shuffled_batches(ctx, len(neighbors), batch_size):
        pick = torch.randint(neighbors.shape[1] + include_self, (len(idx),), device=ctx.device)
        candidates = torch.cat([neighbors[idx], idx[:, None]], 1) if include_self else neighbors[idx]
        yield torch.cat([idx, candidates.gather(1, pick[:, None]).squeeze(1)])


@torch.no_grad()
def infer(fn: Callable[[torch.Tensor], torch.Tensor], images: Images, view, batch_size: int,
          device: torch.device, batch_dim: int = 0, workers: int = 4, ctx: RunContext | None = None) -> torch.Tensor:
    """Apply `fn` to view(images) batch by batch, on `device`, without gradients.

    images: uint8 N×C×H×W, a tensor on any device or DiskImages (streamed by `workers` loader
    processes); fn: float B×C×H×W -> outputs whose batch axis is `batch_dim` (0 for B×D features,
    1 for a ClusteringModel's heads×B×K logits). With a multi-process `ctx`, each rank runs its
    contiguous shard and the outputs are gathered back into dataset order on every rank.
    Returns the outputs for all N images concatenated along `batch_dim`, on `device`.
    """
    n = len(images)
    rows = range(n) if ctx is None else shard(n, ctx.rank, ctx.world_size)
    order = (torch.arange(s, min(rows.stop, s + batch_size), device=device) for s in range(rows.start, rows.stop, batch_size))
    outs = [fn(view(pixels)) for _, pixels in image_batches(images, order, device, workers)]
    if not outs:  # an empty shard: shape the (empty) output like a real one
        outs = [fn(view(images[:1].to(device))).narrow(batch_dim, 0, 0)]
    out = torch.cat(outs, dim=batch_dim)
    if ctx is None or not ctx.dist.active:
        return out
    return ctx.dist.gather_rows(out.movedim(batch_dim, 0).contiguous(), n).movedim(0, batch_dim)
