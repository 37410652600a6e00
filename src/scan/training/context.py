"""The run context, made once per process: the device, how network passes run on it (precision,
memory format, compilation), where the process stands in a data-parallel launch, and the two
random streams of a stage."""

from __future__ import annotations

import contextlib
import random
import signal
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.nn as nn

from scan.config import RuntimeConfig
from scan.distributed import LOCAL, Collectives, Launch, init_process_group, launch_from_env
from scan.errors import ScanError
from scan.heap import keep_freed_memory

T = TypeVar("T")

# Rank r's augmentation stream is seeded with stage_seed + r·RANK_STRIDE (a prime, so the streams
# of nearby seeds and ranks never coincide); rank 0's is the stage seed itself.
RANK_STRIDE = 1_000_003


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda when available, else cpu; under a multi-GPU launch, the rank's own GPU.
    Asking for cuda without one is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ScanError("--device cuda was asked for but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise ScanError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                            f"start at most that many processes per node (torchrun --nproc_per_node)")
        return torch.device("cuda", local_rank)
    return torch.device(name)


# CPU features that do bf16 arithmetic in hardware (names as torch.cpu.get_capabilities gives
# them). Without one, oneDNN emulates bf16 and autocast costs time instead of saving it.
NATIVE_BF16_CPU_FEATURES = ("amx_bf16", "avx512_bf16")


def native_bf16_cpu_feature() -> str | None:
    """The first CPU feature of NATIVE_BF16_CPU_FEATURES this CPU has, or None."""
    capabilities = torch.cpu.get_capabilities()
    return next((name for name in NATIVE_BF16_CPU_FEATURES if capabilities.get(name)), None)


@dataclass(frozen=True)
class Runtime:
    """How network passes run on `device`: bf16 autocast, channels-last memory format and
    torch.compile. Losses are computed outside autocast on float32 outputs, so only the network's
    own arithmetic changes precision."""

    device: torch.device
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_config(cls, rc: RuntimeConfig, device: torch.device) -> Runtime:
        """'auto' turns bf16 autocast and channels-last on where bf16 is native: a CUDA GPU that
        supports it, or a CPU with AMX-BF16 or AVX512-BF16 (there both made every step faster and
        the digits results equal over 20 seeds: benchmarks/README.md). Other CPUs stay in fp32
        and contiguous, where bf16 would be emulated."""
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = device.type == "cpu" and native_bf16_cpu_feature() is not None
        bf16 = rc.precision == "bf16" or (rc.precision == "auto" and native)
        channels_last = rc.channels_last is True or (rc.channels_last == "auto" and native)
        return cls(device, bf16=bf16, channels_last=channels_last, compile=rc.compile)

    def describe(self) -> str:
        """How passes run, for the run's first line: e.g. 'bf16 autocast, channels-last'."""
        parts = ["bf16 autocast" if self.bf16 else "fp32"]
        if self.channels_last:
            parts.append("channels-last")
        if self.compile:
            parts.append("compiled")
        return ", ".join(parts)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on this device, or nothing."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, module: nn.Module) -> nn.Module:
        """`module` in channels-last (converted in place: keys and values, and so checkpoints and
        exported weights, stay the same), compiled when asked. Returns what to call."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return torch.compile(module) if self.compile else module

    def forward(self, net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """net(x) with images in channels-last, under autocast; float outputs come back as float32."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            out = net(x)
        return out.float() if out.is_floating_point() else out


def _stopped_by_launcher(signum: int, frame: Any) -> None:
    """torchrun (or srun) stops the other processes when one fails: say so in one line."""
    raise ScanError("stopped by the launcher: another process of this launch failed or was stopped; "
                    "finished epochs are checkpointed: run the same command again to resume")


@dataclass
class RunContext:
    """One process's view of a run: device and runtime, rank and world size, and the random
    streams of the current stage.

    shuffle: the order of the data, identical on every rank (a CPU generator, so it is the same
        whatever the device). Augmentation, neighbour draws and weight initialisation use torch's
        global generators, seeded per rank by `seed_stage`: rank 0's stream is the stage seed, so a
        single process draws as it always has.
    """

    runtime: Runtime
    launch: Launch = field(default_factory=Launch)
    dist: Collectives = LOCAL
    shuffle: torch.Generator = field(default_factory=torch.Generator)

    @classmethod
    def create(cls, device: str, rc: RuntimeConfig) -> RunContext:
        """The context of this process: a single process, or one rank of a torchrun/srun launch
        (joining its process group). Ranks other than 0 print nothing to stdout. Memory freed by
        one training step is kept for the next (scan.heap)."""
        keep_freed_memory()
        launch = launch_from_env()
        dev = resolve_device(device, launch.local_rank)
        if launch.world_size > 1:
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            init_process_group(launch, dev)
            signal.signal(signal.SIGTERM, _stopped_by_launcher)
            if launch.rank != 0:
                sys.stdout = open("/dev/null", "w")  # noqa: SIM115 - for the life of the process
        return cls(Runtime.from_config(rc, dev), launch, Collectives(launch.rank, launch.world_size))

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def is_main(self) -> bool:
        return self.launch.rank == 0

    def alone(self) -> RunContext:
        """This context as a single process (for work rank 0 does by itself)."""
        return replace(self, launch=Launch(), dist=LOCAL)

    def main_alone(self, work: Callable[[RunContext], T]) -> T:
        """work(a single-process context) on rank 0 alone while the other ranks wait; every rank
        returns rank 0's result (for work too small to share, e.g. heads on cached features)."""
        if not self.dist.active:
            return work(self)
        result = work(self.alone()) if self.is_main else None
        self.dist.barrier()
        return self.dist.broadcast(result)

    def seed_stage(self, seed: int) -> None:
        """Start a stage's random streams: the shuffle stream from `seed` on every rank, the
        global (augmentation) stream from `seed` + rank·RANK_STRIDE."""
        own = seed + self.rank * RANK_STRIDE
        random.seed(own)
        np.random.seed(own % 2**32)
        torch.manual_seed(own)
        self.shuffle.manual_seed(seed)

    def prepare(self, model: nn.Module) -> nn.Module:
        """What to call for a model being trained: channels-last/compiled as the runtime asks, and
        under a multi-process launch wrapped in DistributedDataParallel (with SyncBatchNorm on
        GPUs, so BatchNorm sees the global batch as in one process; gloo has no SyncBatchNorm, so
        on CPU each rank normalises its own share)."""
        if self.dist.active:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            net: nn.Module = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None)
        else:
            net = model
        return self.runtime.prepare(net)

    def forward(self, net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return self.runtime.forward(net, x)

    def rng_state(self) -> dict[str, Any]:
        """This rank's random streams, to store in a checkpoint."""
        return {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        self.shuffle.set_state(state["shuffle"])
        if torch.cuda.is_available() and state.get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["cuda"])
