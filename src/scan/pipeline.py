"""`scan run`: prepare the run directory, then chain the stages, skipping finished ones."""

from __future__ import annotations

import os
import shutil
import time
import zlib
from pathlib import Path
from typing import Callable

import torch
import yaml

from scan.checkpoint import STAGES, RunDir, save_json, save_text
from scan.config import RunConfig, config_diff, config_from_dict, fingerprint
from scan.console import echo, set_log_file
from scan.data.sources import ImageSplits, load_source
from scan.errors import ScanError
from scan.evaluate import evaluate_run
from scan.stages.cluster import run_cluster
from scan.stages.mine import run_mine
from scan.stages.pretext import run_pretext
from scan.stages.selflabel import run_selflabel
from scan.train import resolve_device, seed_everything

STAGE_FUNCTIONS: dict[str, Callable[[RunConfig, RunDir, ImageSplits, torch.device], dict]] = {
    "pretext": run_pretext,
    "mine": run_mine,
    "cluster": run_cluster,
    "selflabel": run_selflabel,
}
# Keys that may change between invocations of one run without invalidating it.
RUNTIME_KEYS = ("device", "runtime.")


def open_run(cfg: RunConfig, out: str | Path | None, force: bool) -> RunDir:
    """Create or reopen the run directory; refuse one that holds another config unless forced.
    The config is written by `commit_config`, once the data has been checked against it."""
    run = RunDir(out if out is not None else Path("runs") / cfg.preset)
    try:
        run.root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ScanError(f"cannot create --out {run.root}: {err.strerror}") from None
    if not os.access(run.root, os.W_OK):
        raise ScanError(f"cannot write to --out {run.root}: permission denied")
    new = cfg.to_dict()
    if run.config.is_file():
        # Filled with today's defaults, so keys added since that run was made are not a change.
        old = config_from_dict(yaml.safe_load(run.config.read_text()) or {}).to_dict()
        changes = [line for line in config_diff(old, new) if not line.startswith(RUNTIME_KEYS)]
        if changes and not force:
            raise ScanError(
                f"{run.root} holds a run with another config ({'; '.join(changes[:3])}"
                f"{'; ...' if len(changes) > 3 else ''}); pass --force to rerun the changed stages or choose another --out"
            )
    set_log_file(run.log)
    return run


def commit_config(run: RunDir, cfg: RunConfig, data: ImageSplits | None = None) -> None:
    """Record the resolved config as the run's own (RUN/config.yaml), and the files the data
    source skipped as unreadable (RUN/skipped.txt)."""
    save_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), run.config)
    if data is not None and data.skipped:
        save_text("".join(f"{path}\n" for path in data.skipped), run.root / "skipped.txt")


def read_config(run: RunDir) -> RunConfig:
    """The resolved config stored in an existing run directory."""
    if not run.config.is_file():
        raise ScanError(f"{run.root} is not a run directory (no config.yaml)")
    return config_from_dict(yaml.safe_load(run.config.read_text()))


def load_data(cfg: RunConfig) -> ImageSplits:
    """Load the images and check the config against their counts."""
    data = load_source(cfg.data, cfg.runtime.stream)
    n_train, n_test = len(data.train), len(data.test)
    if n_train == 0 or n_test == 0:
        raise ScanError(f"the dataset needs train and test images; got {n_train} train and {n_test} test")
    if cfg.clusters > n_train:
        raise ScanError(f"--clusters {cfg.clusters} is larger than the number of train images ({n_train})")
    if cfg.mine.k >= n_train:
        raise ScanError(f"mine.k={cfg.mine.k} must be smaller than the number of train images ({n_train})")
    if cfg.cluster.select_on == "test" and cfg.mine.val_k >= n_test:
        raise ScanError(f"mine.val_k={cfg.mine.val_k} must be smaller than the number of test images ({n_test})")
    echo(f"data: {cfg.data.source}, {n_train} train / {n_test} test images, "
         f"{cfg.data.channels}×{cfg.data.size}×{cfg.data.size}, {cfg.clusters} clusters")
    return data


def run_stage(name: str, cfg: RunConfig, run: RunDir, data: ImageSplits, device: torch.device, rerun: bool = False) -> None:
    """Run one stage unless it already finished with the same inputs; record its wall time."""
    stamp = fingerprint(cfg, name)
    if run.is_done(name, stamp) and not rerun:
        echo(f"{name}: finished earlier with this config, skipped")
        return
    if run.done(name).is_file() or rerun:
        shutil.rmtree(run.stage(name), ignore_errors=True)
    # Whatever came after this stage was computed from its old outputs.
    for later in STAGES[STAGES.index(name) + 1:]:
        shutil.rmtree(run.stage(later), ignore_errors=True)
    # Each stage starts from its own seed, so skipping or resuming earlier stages never shifts
    # the random stream of later ones.
    seed_everything(cfg.seed * 1000 + zlib.crc32(name.encode()) % 1000)
    start = time.perf_counter()
    summary = STAGE_FUNCTIONS[name](cfg, run, data, device)
    seconds = time.perf_counter() - start
    save_json({"fingerprint": stamp, "seconds": seconds, "summary": summary}, run.done(name))
    details = "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in summary.items())
    echo(f"{name}: done in {seconds:.1f}s{details}")


def run_pipeline(cfg: RunConfig, out: str | Path | None = None, force: bool = False) -> dict:
    """Run every stage in order, then evaluate. Returns the metrics dict (also in metrics.json)."""
    run = open_run(cfg, out, force)
    device = resolve_device(cfg.device)
    echo(f"run: {run.root} (preset {cfg.preset}, seed {cfg.seed}, device {device})")
    data = load_data(cfg)
    commit_config(run, cfg, data)
    for name in STAGES:
        run_stage(name, cfg, run, data, device)
    return evaluate_run(run, cfg, device, data)
