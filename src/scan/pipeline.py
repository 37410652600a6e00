"""`scan run`: prepare the run directory, then chain the stages, skipping finished ones.

Under torchrun every rank runs this; rank 0 alone writes the run directory and the log, and the
ranks meet at barriers wherever one reads what rank 0 wrote.
"""

from __future__ import annotations

import shutil
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch.distributed

from scan.checkpoint import RunDir, save_json
from scan.config import RunConfig, fingerprint
from scan.console import echo
from scan.data.sources import ImageSplits, load_source
from scan.errors import ScanError
from scan.evaluate import evaluate_run
from scan.rundir import commit_config, open_run
from scan.stage_table import STAGE_NAMES, stage_spec
from scan.training.context import RunContext
from scan.kestimate import resolve_clusters


def load_data(cfg: RunConfig) -> ImageSplits:
    """Load the images and check the config against their counts."""
    data = load_source(cfg.data, cfg.runtime.stream)
    n_train, n_test = len(data.train), len(data.test)
    if n_train == 0 or n_test == 0:
        raise ScanError(f"the dataset needs train and test images; got {n_train} train and {n_test} test")
    if cfg.clusters != "auto" and cfg.clusters > n_train:
        raise ScanError(f"--clusters {cfg.clusters} is larger than the number of train images ({n_train})")
    if cfg.mine.k >= n_train:
        raise ScanError(f"mine.k={cfg.mine.k} must be smaller than the number of train images ({n_train})")
    if cfg.cluster.select_on == "test" and cfg.mine.val_k >= n_test:
        raise ScanError(f"mine.val_k={cfg.mine.val_k} must be smaller than the number of test images ({n_test})")
    echo(f"data: {cfg.data.source}, {n_train} train / {n_test} test images, "
         f"{cfg.data.channels}×{cfg.data.size}×{cfg.data.size}, {cfg.clusters} clusters")
    return data


def run_stage(ctx: RunContext, name: str, cfg: RunConfig, run: RunDir, data: ImageSplits, rerun: bool = False) -> None:
    """Run one stage unless it already finished with the same inputs; record its wall time."""
    spec = stage_spec(name)
    if spec.requires is not None and not run.done(spec.requires).is_file():
        raise ScanError(f"{name} needs the finished {spec.requires} stage in {run.root}; run `scan {spec.requires}` first")
    if name in ("cluster", "selflabel"):
        cfg = resolve_clusters(cfg, run, write=ctx.is_main)  # --clusters auto: K from mining's outputs
    stamp = fingerprint(cfg, name)
    if run.is_done(name, stamp) and not rerun:
        echo(f"{name}: finished earlier with this config, skipped")
        return
    if ctx.is_main:
        if run.done(name).is_file() or rerun:
            shutil.rmtree(run.stage(name), ignore_errors=True)
        # Whatever came after this stage was computed from its old outputs.
        for later in STAGE_NAMES[STAGE_NAMES.index(name) + 1:]:
            shutil.rmtree(run.stage(later), ignore_errors=True)
    ctx.dist.barrier()
    # Each stage starts from its own seed, so skipping or resuming earlier stages never shifts
    # the random stream of later ones.
    ctx.seed_stage(cfg.seed * 1000 + zlib.crc32(name.encode()) % 1000)
    start = time.perf_counter()
    summary = spec.function()(ctx, cfg, run, data)
    seconds = time.perf_counter() - start
    if ctx.is_main:
        save_json({"fingerprint": stamp, "seconds": seconds, "summary": summary}, run.done(name))
    ctx.dist.barrier()
    details = "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in summary.items())
    echo(f"{name}: done in {seconds:.1f}s{details}")


def start_run(cfg: RunConfig, out: str | Path | None, force: bool) -> tuple[RunContext, RunDir, ImageSplits]:
    """The process's run context, the run directory (opened and written by rank 0) and the data."""
    ctx = RunContext.create(cfg.device, cfg.runtime)
    run = open_run(cfg, out, force) if ctx.is_main else RunDir(out if out is not None else Path("runs") / cfg.preset)
    ranks = f", {ctx.world_size} processes" if ctx.dist.active else ""
    echo(f"run: {run.root} (preset {cfg.preset}, seed {cfg.seed}, device {ctx.device}: {ctx.runtime.describe()}{ranks})")
    # Rank 0 first: a file source decodes once into the shared cache, which the others then read.
    data = load_data(cfg) if ctx.is_main else None
    ctx.dist.barrier()
    data = data if data is not None else load_data(cfg)
    if ctx.is_main:
        commit_config(run, cfg, data)
    ctx.dist.barrier()
    return ctx, run, data


def run_pipeline(cfg: RunConfig, out: str | Path | None = None, force: bool = False) -> dict:
    """Run every stage in order, then evaluate. Returns the metrics dict (also in metrics.json;
    under several processes, rank 0 evaluates and the others return it as read from there)."""
    with distributed_errors():
        ctx, run, data = start_run(cfg, out, force)
        for name in STAGE_NAMES:
            run_stage(ctx, name, cfg, run, data)
        metrics = evaluate_run(run, cfg, ctx.device, data) if ctx.is_main else None
        return ctx.dist.broadcast(metrics)


# What gloo and NCCL say when a peer process is gone (their errors inside autograd's backward
# arrive as plain RuntimeErrors).
LOST_PEER_MESSAGES = ("Connection reset by peer", "Connection closed by peer", "gloo/transport", "NCCL error",
                      "ProcessGroupNCCL", "ProcessGroupGloo")


def lost_peer(err: BaseException) -> bool:
    return torch.distributed.is_initialized() and any(m in str(err) for m in LOST_PEER_MESSAGES)


@contextmanager
def distributed_errors() -> Iterator[None]:
    """Turn a failed collective (another rank died or was stopped) into one line, and leave the
    process group on the way out."""
    try:
        yield
    except RuntimeError as err:  # DistError, or a collective failing inside autograd's backward
        if not (isinstance(err, torch.distributed.DistError) or lost_peer(err)):
            raise
        raise ScanError(f"another process of this launch stopped ({str(err).splitlines()[0][:200]}); "
                        "finished epochs are checkpointed: run the same command again to resume") from None
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
