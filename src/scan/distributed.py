"""Data-parallel training across processes with PyTorch's own engine: the process group that
`torchrun` (or SLURM's `srun`) describes through environment variables, and the few collectives
the losses and stages need. Without such a launcher everything here is the identity, so a plain
`scan run` never touches torch.distributed.

Conventions every collective here follows: ranks hold equally many rows of a global batch, in rank
order; gathered tensors are concatenated in rank order, so row i of a gathered tensor is row
i % b of rank i // b.
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from scan.errors import ScanError

# torch 2.x marks the autograd collectives of torch.distributed.nn as deprecated in favour of the
# private torch.distributed._functional_collectives; the public ones still work and are tested
# here (tests/test_distributed.py), so their warning is not shown to users.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_(gather|reduce) is deprecated",
                        category=FutureWarning)

# Longest wait in one collective: ranks idle at a barrier while rank 0 alone decodes a folder into
# the cache (hours for ImageNet), mines neighbours, trains head-only heads or evaluates. A rank that
# dies is noticed much sooner: gloo and NCCL fail the peers' collectives when its connections close,
# and torchrun stops the rest.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a launch: global rank, world size and rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def launch_from_env(env: dict[str, str] | None = None) -> Launch:
    """The launch described by torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or, failing that, by SLURM
    (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT set by the user's
    job script); a single process otherwise."""
    env = os.environ if env is None else env

    def number(name: str) -> int:
        try:
            return int(env[name])
        except ValueError:
            raise ScanError(f"environment variable {name}={env[name]!r} is not an integer") from None

    if "WORLD_SIZE" in env and "RANK" in env:
        return Launch(number("RANK"), number("WORLD_SIZE"), number("LOCAL_RANK") if "LOCAL_RANK" in env else 0)
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env and number("SLURM_NTASKS") > 1:
        if "MASTER_ADDR" not in env:
            raise ScanError("running under srun with several tasks needs MASTER_ADDR (and MASTER_PORT) in the "
                            "environment: the host of task 0, e.g. export MASTER_ADDR=$(scontrol show hostnames "
                            "$SLURM_JOB_NODELIST | head -n 1) MASTER_PORT=29500")
        return Launch(number("SLURM_PROCID"), number("SLURM_NTASKS"),
                      number("SLURM_LOCALID") if "SLURM_LOCALID" in env else 0)
    return Launch()


def init_process_group(launch: Launch, device: torch.device) -> None:
    """Join the launch's process group: NCCL for CUDA devices, gloo for CPU. Rendezvous uses the
    MASTER_ADDR/MASTER_PORT (env://) that torchrun sets, or that srun users export."""
    if launch.world_size == 1 or dist.is_initialized():
        return
    os.environ.setdefault("RANK", str(launch.rank))
    os.environ.setdefault("WORLD_SIZE", str(launch.world_size))
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size,
                            timeout=COLLECTIVE_TIMEOUT, **kwargs)


class Collectives:
    """The collectives of one process group (or of a single process, where each is the identity).

    Autograd flows through `gather` and `sum`: a loss computed on gathered rows sends gradients back
    to the rank that owns them, so each rank's loss gradient, averaged over ranks as
    DistributedDataParallel does, is the gradient of the loss of the whole global batch.
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' b×... tensors concatenated in rank order ((world·b)×...), with gradients."""
        if not self.active:
            return x
        return torch.cat(dist_nn.all_gather(x.contiguous()))

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """The elementwise sum over ranks, with gradients."""
        if not self.active:
            return x
        return dist_nn.all_reduce(x.contiguous(), op=dist.ReduceOp.SUM)

    def sum_(self, x: torch.Tensor) -> torch.Tensor:
        """The elementwise sum over ranks, in place and without gradients (counts, logged values)."""
        if self.active:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def gather_rows(self, x: torch.Tensor, total: int) -> torch.Tensor:
        """Rows sharded by `shard` (rank r holds rows shard(total, r)) put back in order: total×...
        on every rank, without gradients. Shards differ by at most one row; they are padded to
        the same length for the exchange."""
        if not self.active:
            return x
        longest = -(-total // self.world_size)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: len(shard(total, r, self.world_size))] for r, p in enumerate(parts)])

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """`obj` as rank `src` holds it, on every rank (any picklable object)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


LOCAL = Collectives()


def shard(total: int, rank: int, world_size: int) -> range:
    """The contiguous rows of `total` that rank `rank` handles in sharded inference: the first
    total % world_size ranks take one row more."""
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))
