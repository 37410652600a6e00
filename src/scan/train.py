"""What the training stages share: device, seeding, optimisers, precomputed schedules, batching,
the non-finite-loss guard, and per-epoch checkpoint/resume."""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from scan.checkpoint import RunDir, load_torch, rewrite_jsonl, save_torch
from scan.config import RuntimeConfig
from scan.data.stream import Images, image_batches
from scan.errors import ScanError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu. Asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ScanError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


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
        """'auto' turns bf16 autocast (where the GPU supports bf16) and channels-last on for CUDA
        and leaves CPU runs in fp32 and contiguous, the numbers every CPU result was made with
        (on a CPU with AVX512-BF16 both are faster when asked for; benchmarks/README.md)."""
        cuda = device.type == "cuda"
        bf16 = rc.precision == "bf16" or (rc.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
        channels_last = rc.channels_last is True or (rc.channels_last == "auto" and cuda)
        return cls(device, bf16=bf16, channels_last=channels_last, compile=rc.compile)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on this device, or nothing."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def wrap(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """A forward function for `module`: images go in channels-last, the pass runs under
        autocast (compiled when asked), float outputs come back as float32. Channels-last converts
        the parameters' memory layout in place; their keys and values, and so checkpoints and
        exported weights, stay the same. Train/eval mode is `module`'s, which is what gets saved."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        forward = torch.compile(module) if self.compile else module

        def run(x: torch.Tensor) -> torch.Tensor:
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                out = forward(x)
            return out.float() if out.is_floating_point() else out

        return run


def seed_everything(seed: int) -> None:
    """Seed every RNG the stages draw from (all randomness goes through torch's global RNG)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """SGD (momentum, no Nesterov) or Adam, as the original configs use them."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def cosine_schedule(base_lr: float, epochs: int, decay_rate: float = 0.1, warmup_epochs: int = 0) -> list[float]:
    """Per-epoch learning rates: the original's cosine from lr to eta_min = lr·decay_rate³
    (utils/common_config.py::adjust_learning_rate), after an optional linear warm-up."""
    eta_min = base_lr * decay_rate**3
    lrs = []
    for e in range(epochs):
        if e < warmup_epochs:
            lrs.append(base_lr * (e + 1) / warmup_epochs)
        else:
            t = (e - warmup_epochs) / max(1, epochs - warmup_epochs)
            lrs.append(eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t)) / 2)
    return lrs


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def shuffled_batches(n: int, batch_size: int, device: torch.device, drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Index batches of a random permutation of range(n). Drops the last partial batch (as the
    original loaders do) unless that would leave no batch at all."""
    order = torch.randperm(n).to(device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def anchor_neighbor_batches(neighbors: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Index batches for the SCAN step: B shuffled anchors followed by one of each anchor's
    neighbours, drawn uniformly (2B indices). neighbors: int64 N×k on `device`."""
    for idx in shuffled_batches(len(neighbors), batch_size, device):
        pick = torch.randint(neighbors.shape[1], (len(idx),), device=device)
        yield torch.cat([idx, neighbors[idx, pick]])


def ordered_batches(n: int, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Index batches 0..n-1 in order, for inference."""
    for start in range(0, n, batch_size):
        yield torch.arange(start, min(n, start + batch_size), device=device)


def check_finite(loss: torch.Tensor, stage: str, epoch: int) -> None:
    """Stop the stage on a NaN/inf loss; the last good checkpoint stays on disk."""
    if not torch.isfinite(loss):
        raise ScanError(
            f"{stage}: non-finite loss ({loss.item()}) in epoch {epoch + 1}; stopped, last good "
            "checkpoint kept (try a lower learning rate)"
        )


@dataclass
class Resumable:
    """A stage's training state that survives interruption: restored from and saved to
    RUN/<stage>/checkpoint.pt once per epoch, with the RNG state so a resumed run continues
    exactly as an uninterrupted one."""

    run: RunDir
    stage: str
    fingerprint: str
    config: dict[str, Any]
    modules: dict[str, nn.Module | torch.optim.Optimizer]
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def restore(self) -> bool:
        """Load the checkpoint if one exists for this config; True when resumed."""
        path = self.run.checkpoint(self.stage)
        if not path.is_file():
            return False
        state = load_torch(path)
        if state.get("fingerprint") != self.fingerprint:
            return False
        for name, module in self.modules.items():
            module.load_state_dict(state[name])
        self.epoch, self.history, self.extra = state["epoch"], state["history"], state["extra"]
        torch.set_rng_state(state["rng"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return True

    def save(self) -> None:
        """Checkpoint after a finished epoch (atomically) and rewrite history.jsonl to match."""
        state = {name: module.state_dict() for name, module in self.modules.items()}
        state.update(
            epoch=self.epoch, history=self.history, extra=self.extra, fingerprint=self.fingerprint,
            config=self.config, rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        )
        save_torch(state, self.run.checkpoint(self.stage))
        rewrite_jsonl(self.history, self.run.history(self.stage))


@torch.no_grad()
def infer(fn, images: Images, view, batch_size: int, device: torch.device, batch_dim: int = 0,
          workers: int = 4) -> torch.Tensor:
    """Apply `fn` to view(images) batch by batch, on `device`, without gradients.

    images: uint8 N×C×H×W, a tensor on any device or DiskImages (streamed by `workers` loader
    processes); fn: float B×C×H×W -> outputs whose batch axis is `batch_dim` (0 for B×D features,
    1 for a ClusteringModel's heads×B×K logits). Returns the outputs concatenated along that axis,
    on `device`.
    """
    batches = image_batches(images, ordered_batches(len(images), batch_size, device), device, workers)
    return torch.cat([fn(view(pixels)) for _, pixels in batches], dim=batch_dim)
