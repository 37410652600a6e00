"""Training throughput of every stage, exact top-k mining against faiss, and the validation loss.

Prints one JSON object per line. The first line describes the machine; then, per stage and
backbone (ResNet-18 with the CIFAR stem on 32×32 RGB, as the `cifar10` preset; the small CNN on
8×8 grey, as `digits`), a line with the keys

    benchmark, stage, device, backbone, batch, images_per_s, augment_share, peak_mb

(plus precision, channels_last, compile, steps_per_window, windows, val_images_per_s, epoch_s_50k
where they apply); mining lines add n, d, seconds, faiss_seconds; validation-loss lines add n,
seconds (from benchmarks/validation_loss.py, which also runs the original's N×N form).
Throughput counts source images (SimCLR: images, not views; SCAN: anchors) per second:
synthetic uint8 images go through the stage's real augmentation, model, loss and optimiser step;
after warm-up steps, the median of several timed windows. augment_share is the time spent making
the views over the whole step time. peak_mb is the peak memory above what was in use before the
measurement: on CUDA torch.cuda.max_memory_allocated, on CPU the process's resident set size
sampled every 2 ms from /proc/self/statm after returning freed heap pages to the OS (malloc_trim),
so it counts everything the measurement touched, library buffers included.

    python benchmarks/stages.py --quick                  # CPU subset, under 3 minutes
    python benchmarks/stages.py                          # everything for this device
    python benchmarks/stages.py --device cuda            # the paper's batch sizes on a GPU
    python benchmarks/stages.py --only mining --mining-n 50000 --mining-d 128
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable

import torch

from scan.config import RuntimeConfig, build_config
from scan.data.stream import cpu_workers
from scan.data.views import make_view
from scan.heap import glibc_defaults, keep_freed_memory, release_free_memory
from scan.knn import faiss_available, knn
from scan.losses import validation_scan_loss
from scan.models.backbones import build_backbone
from scan.models.heads import ClusteringModel, ContrastiveModel
from scan.stages.cluster import FullNetwork, HeadsOnFeatures, scan_step
from scan.stages.pretext import simclr_step
from scan.stages.selflabel import selflabel_step
from scan.training.batches import infer
from scan.training.context import RunContext, Runtime, native_bf16_cpu_feature
from scan.training.loop import train_step
from scan.training.optim import build_optimizer

from quality import cpu_name  # benchmarks/quality.py, beside this script

STAGES = ("pretext", "mine", "cluster", "cluster_head_only", "selflabel")
# backbone -> the preset whose data and stage settings it is measured with
BACKBONE_PRESETS = {"resnet18_cifar": "cifar10", "small_cnn": "digits", "small_cnn_narrow": "cifar10_cpu",
                    "small_cnn_narrow_3stage": "cifar10_cpu"}

# ---- measuring ----------------------------------------------------------------------------------


def machine(device: torch.device) -> dict:
    line = {"benchmark": "machine", "cpu": cpu_name(), "native_bf16": native_bf16_cpu_feature(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device)}
    if device.type == "cuda":
        line["gpu"] = torch.cuda.get_device_name(device)
    if faiss_available():
        import faiss

        line["faiss"] = faiss.__version__
    return line


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry, in MiB: CUDA allocator peak, or sampled CPU RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mb = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            release_free_memory()  # growth then shows in the resident set, not in memory freed earlier
            self.base = self.peak = _rss_bytes()
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, _rss_bytes())
            self.mb = (self.peak - self.base) / 2**20


def timed(step: Callable[[], float], device: torch.device, warmup: int, windows: int,
          window_s: float, max_steps: int) -> dict:
    """Run `step` (which returns its own augmentation seconds) `warmup` times, then `windows`
    windows of equally many steps (enough for about `window_s` seconds, at most `max_steps`).
    Returns the median seconds per step and the augmentation share over all timed steps."""
    first = None
    for _ in range(warmup):
        start = time.perf_counter()
        step()
        sync(device)
        first = time.perf_counter() - start
    per_window = max(1, min(max_steps, math.ceil(window_s / max(first or window_s, 1e-4))))
    per_step, aug_total, all_total = [], 0.0, 0.0
    for _ in range(windows):
        start, aug = time.perf_counter(), 0.0
        for _ in range(per_window):
            aug += step()
        sync(device)
        elapsed = time.perf_counter() - start
        per_step.append(elapsed / per_window)
        aug_total, all_total = aug_total + aug, all_total + elapsed
    return {"step_s": statistics.median(per_step), "augment_share": aug_total / all_total,
            "steps_per_window": per_window, "windows": windows}


@contextmanager
def _aug_timer(device: torch.device, box: list[float]):
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    box[0] += time.perf_counter() - start


# ---- stages ---------------------------------------------------------------------------------------


def stage_line(args, stage: str, backbone: str, batch: int, runtime: Runtime, result: dict, peak_mb: float) -> dict:
    line = {"benchmark": "stages", "stage": stage, "device": args.device.type, "backbone": backbone, "batch": batch,
            "images_per_s": round(batch / result["step_s"], 2), "augment_share": round(result["augment_share"], 4),
            "peak_mb": round(peak_mb, 1), "precision": "bf16" if runtime.bf16 else "fp32",
            "channels_last": runtime.channels_last, "compile": runtime.compile,
            "steps_per_window": result["steps_per_window"], "windows": result["windows"]}
    return line


def timed_view(view: Callable[[torch.Tensor], torch.Tensor], device: torch.device, box: list[float]) -> Callable:
    """`view` that adds its own (synchronised) time to box[0]."""

    def run(images: torch.Tensor) -> torch.Tensor:
        with _aug_timer(device, box):
            return view(images)

    return run


def run_stage(args, stage: str, backbone: str, batch: int) -> dict:
    """Time the stage's own step function (scan.stages.*), through the training loop's own
    optimiser step (scan.training.loop.train_step), on synthetic images."""
    cfg = build_config(BACKBONE_PRESETS[backbone], device=args.device.type)
    dc, device = cfg.data, args.device
    runtime = Runtime.from_config(RuntimeConfig(args.precision, args.channels_last, args.compile), device)
    ctx = RunContext(runtime)
    torch.manual_seed(0)
    pool = torch.randint(0, 256, (args.pool, dc.channels, dc.size, dc.size), dtype=torch.uint8).to(device)
    timing = dict(device=device, warmup=args.warmup, windows=args.windows, window_s=args.window_s, max_steps=args.max_steps)
    aug = [0.0]

    def draw(n: int) -> torch.Tensor:
        return torch.randint(len(pool), (n,), device=device)

    def fresh_backbone() -> torch.nn.Module:
        return build_backbone(backbone, dc.channels)

    with PeakMemory(device) as mem:
        extra: dict = {}
        if stage == "mine":
            model = ContrastiveModel(fresh_backbone(), cfg.pretext.feature_dim).to(device).eval()
            net = runtime.prepare(model if cfg.mine.features == "projection" else model.backbone)
            view = timed_view(make_view("weak", dc), device, aug)

            def step() -> float:
                aug[0] = 0.0
                infer(lambda x: runtime.forward(net, x), pool[draw(batch)], view, batch, device)
                return aug[0]

        else:
            if stage == "pretext":
                model = ContrastiveModel(fresh_backbone(), cfg.pretext.feature_dim).to(device).train()
                opt = build_optimizer("sgd", model.parameters(), 0.1, cfg.pretext.weight_decay, 0.9)
                stage_step = simclr_step(ctx, ctx.prepare(model), timed_view(make_view("simclr", dc), device, aug),
                                         cfg.pretext.temperature)

                def make_batch():
                    idx = draw(batch)
                    return idx, pool[idx]

            elif stage in ("cluster", "cluster_head_only"):
                neighbors = torch.randint(len(pool), (len(pool), cfg.mine.k), device=device)
                if stage == "cluster_head_only":
                    features = torch.nn.functional.normalize(torch.randn(len(pool), fresh_backbone().out_dim), dim=1)
                    mode = HeadsOnFeatures(ctx, cfg, features, features, fresh_backbone)
                else:
                    mode = FullNetwork(ctx, cfg, pool, pool[: max(cfg.mine.batch_size, args.val_images)], fresh_backbone)
                model, opt = mode.fresh()
                mode.train_mode()
                if stage == "cluster":
                    mode.view = timed_view(mode.view, device, aug)
                stage_step = scan_step(ctx, mode, cfg.cluster.entropy_weight)

                def make_batch():
                    idx = draw(batch)
                    pair = torch.cat([idx, neighbors[idx, torch.randint(neighbors.shape[1], (batch,), device=device)]])
                    return pair if stage == "cluster_head_only" else (pair, pool[pair])

            elif stage == "selflabel":
                model = ClusteringModel(fresh_backbone(), cfg.clusters, 1).to(device).train()
                opt = build_optimizer("adam", model.parameters(), 1e-4, cfg.selflabel.weight_decay, 0.9)
                # A threshold of 0 makes every sample confident, so every step does its full work.
                stage_step = selflabel_step(ctx, ctx.prepare(model), timed_view(make_view("weak", dc), device, aug),
                                            timed_view(make_view(cfg.selflabel.augment, dc), device, aug), 0.0, True)

                def make_batch():
                    idx = draw(batch)
                    return idx, pool[idx]

            else:
                raise ValueError(stage)

            def step() -> float:
                aug[0] = 0.0
                train_step(ctx, stage_step, opt, make_batch(), stage)
                return aug[0]

        if stage == "cluster_head_only":
            result = timed(step, **{**timing, "max_steps": 10_000})
        else:
            result = timed(step, **timing)

        # What a default cluster epoch adds: the label-free validation over the selection split
        # (train, N = 50k for CIFAR-10), the stage's own pass, in eval mode on the weak view.
        if stage in ("cluster", "cluster_head_only"):
            model.eval()
            n_val = len(mode.select_images) if stage == "cluster" else len(pool)
            start = time.perf_counter()
            probs = mode.select_probs()
            if stage == "cluster_head_only":
                for p in probs:
                    validation_scan_loss(p, neighbors[:, : cfg.mine.val_k])
            sync(device)
            extra["val_images_per_s"] = round(n_val / (time.perf_counter() - start), 2)
            n = 50_000
            extra["epoch_s_50k"] = round(n / (batch / result["step_s"]) + n / extra["val_images_per_s"], 2)
    line = stage_line(args, stage, backbone, batch, runtime, result, mem.mb)
    line.update(extra)
    return line


def run_baseline(args, stage: str, backbone: str, batch: int, ours: dict) -> dict:
    """The original-style step of `stage` (benchmarks/original_style.py) with the same model and
    batch, timed by the same harness right after ours, and the ratios of the two: per step, and
    per CIFAR-10 epoch (50,000 train images) with the passes each adds after an epoch."""
    import original_style as orig

    cfg = build_config(BACKBONE_PRESETS[backbone])
    dc, device = cfg.data, args.device
    torch.manual_seed(0)
    pool = torch.randint(0, 256, (args.pool, dc.channels, dc.size, dc.size), dtype=torch.uint8)
    workers = cpu_workers(8)  # the original's 8 loader workers, at most the CPUs here
    timing = dict(device=device, warmup=args.warmup, windows=args.windows, window_s=args.window_s,
                  max_steps=args.max_steps)
    pin = device.type == "cuda"
    n, n_test = 50_000, 10_000
    if stage == "pretext":
        model = ContrastiveModel(build_backbone(backbone, dc.channels), cfg.pretext.feature_dim).to(device).train()
        opt = build_optimizer("sgd", model.parameters(), 0.1, cfg.pretext.weight_decay, 0.9)
        view = orig.simclr_transform(dc)
        batches = orig.Batches(orig.loader(orig.PILImages(pool, [view, view]), batch, workers, pin=pin))
        result = timed(orig.simclr_step(model, opt, batches, cfg.pretext.temperature, device), **timing)
        eval_rate = orig.eval_images_per_s(model, pool, dc, cfg.mine.batch_size, workers, min(len(pool), args.val_images),
                                           device)
        # The kNN monitoring pass after every epoch: the train split embedded, then the test split
        # (whose embedding the monitoring also needs) searched against it.
        extra_s = (n + n_test) / eval_rate + orig.knn_monitor_seconds(n, n_test, cfg.pretext.feature_dim, device)
        ours_epoch = n / ours["images_per_s"]
    else:
        model = ClusteringModel(build_backbone(backbone, dc.channels), cfg.clusters, cfg.cluster.num_heads).to(device).train()
        opt = build_optimizer("adam", model.parameters(), 1e-4, cfg.cluster.weight_decay, 0.9)
        neighbors = torch.randint(len(pool), (len(pool), cfg.mine.k))
        batches = orig.Batches(orig.loader(orig.PILImages(pool, [orig.strong_transform(dc)], neighbors), batch, workers,
                                           pin=pin))
        result = timed(orig.scan_step(model, opt, batches, cfg.cluster.entropy_weight, device), **timing)
        eval_rate = orig.eval_images_per_s(model, pool, dc, cfg.mine.batch_size, workers, min(len(pool), args.val_images),
                                           device)
        # The original validates on the test split (10,000 images) with an N×N matrix per head;
        # ours (epoch_s_50k) includes its own default validation pass over the 50,000 train images.
        extra_s = n_test / eval_rate + orig.nxn_validation_seconds(n_test, cfg.clusters, cfg.cluster.num_heads, device)
        ours_epoch = ours["epoch_s_50k"]
    rate = batch / result["step_s"]
    epoch = n / rate + extra_s
    return {"benchmark": "baseline", "stage": stage, "impl": "original_style", "device": device.type, "backbone": backbone,
            "batch": batch, "workers": workers, "images_per_s": round(rate, 2),
            "loader_wait_share": round(result["augment_share"], 4), "epoch_s_50k": round(epoch, 1),
            "ours_images_per_s": ours["images_per_s"], "ours_epoch_s_50k": round(ours_epoch, 1),
            "step_ratio": round(ours["images_per_s"] / rate, 3), "epoch_ratio": round(epoch / ours_epoch, 3)}


@contextmanager
def glibc_heap():
    """glibc's own allocator behaviour inside (DataLoader workers forked here inherit it), scan's
    kept heap again after."""
    glibc_defaults()
    try:
        yield
    finally:
        keep_freed_memory()


def run_previous_defaults(args, stage: str, backbone: str, batch: int, ours: dict) -> dict:
    """The same stage timed right after, in the same process, with the CPU defaults of before
    the automatic choice (fp32, contiguous, glibc's heap): its images/s and ours over it."""
    previous = copy.copy(args)
    previous.precision, previous.channels_last, previous.compile = "fp32", False, False
    with glibc_heap():
        line = run_stage(previous, stage, backbone, batch)
    return {"previous_images_per_s": line["images_per_s"],
            "speedup_vs_previous": round(ours["images_per_s"] / line["images_per_s"], 3)}


# ---- mining ------------------------------------------------------------------------


def run_mining(args, n: int, d: int) -> dict:
    """Exact top-k (k = 20) self-search over n×d random features: ours and, when installed, faiss."""
    device = args.device
    feats = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d)).to(device)
    queries = min(n, args.mining_queries) if args.mining_queries else n
    q = None if queries == n else feats[:queries]
    line = {"benchmark": "mining", "stage": "mine", "device": device.type, "backbone": None, "batch": args.knn_chunk,
            "n": n, "d": d, "k": args.k, "images_per_s": None, "augment_share": 0.0}
    if queries != n:
        # Queries are timed on a subset and scaled to all n (the search is linear in the queries);
        # the subset still searches the whole database, so memory is the full search's.
        line["timed_queries"] = queries
    scale = n / queries
    knn(feats[:4096], args.k, chunk=args.knn_chunk)  # warm-up: library start-up is not the search's memory
    with PeakMemory(device) as mem:
        sync(device)
        start = time.perf_counter()
        ours, _ = knn(feats, args.k, queries=q, chunk=args.knn_chunk)
        sync(device)
        line["seconds"] = round((time.perf_counter() - start) * scale, 3)
    line["images_per_s"] = round(n / line["seconds"], 1)
    line["peak_mb"] = round(mem.mb, 1)
    line["faiss_seconds"] = None
    if faiss_available() and not args.no_faiss:
        cpu_feats = feats.cpu()
        knn(cpu_feats[:4096], args.k, backend="faiss")
        with PeakMemory(torch.device("cpu")) as fmem:
            start = time.perf_counter()
            theirs, _ = knn(cpu_feats, args.k, queries=None if q is None else cpu_feats[:queries], backend="faiss")
            line["faiss_seconds"] = round((time.perf_counter() - start) * scale, 3)
        line["faiss_peak_mb"] = round(fmem.mb, 1)
        line["speed_vs_faiss"] = round(line["faiss_seconds"] / line["seconds"], 3)
        line["same_neighbors"] = round((ours.cpu() == theirs).float().mean().item(), 5)
    return line


# ---- main ---------------------------------------------------------------------------------------------


def stage_batches(args, stage: str, backbone: str) -> list[int]:
    if args.batch_size:
        return [args.batch_size]
    cfg = build_config(BACKBONE_PRESETS[backbone])
    preset = {"pretext": cfg.pretext.batch_size, "mine": cfg.mine.batch_size, "cluster": cfg.cluster.batch_size,
              "cluster_head_only": cfg.cluster.batch_size, "selflabel": cfg.selflabel.batch_size}[stage]
    if args.device.type == "cuda" or backbone != "resnet18_cifar":
        return [preset]
    # ResNet-18 on CPU: batch 128 as the original's measurements; pretext also at 256 (the
    # augmentation-share target); the mine pass at its preset batch.
    if stage == "pretext":
        return [128] if args.quick else [128, 256]
    return [preset] if stage == "mine" else [128]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=None, help="one batch size for every stage "
                        "(default: the presets' on CUDA; 128 for ResNet-18 on CPU, and 256 too for pretext)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--channels-last", default="auto", choices=("auto", "true", "false"))
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks")
    parser.add_argument("--quick", action="store_true",
                        help="CPU subset: pretext and cluster (both backbones), mining at N=50k, d=128")
    parser.add_argument("--only", nargs="+", default=None, choices=(*STAGES, "mining", "validation"))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONE_PRESETS), choices=list(BACKBONE_PRESETS))
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--windows", type=int, default=3, help="timed windows (the median is reported)")
    parser.add_argument("--window-s", type=float, default=2.0, help="aim for windows this long")
    parser.add_argument("--max-steps", type=int, default=50, help="at most this many steps per window")
    parser.add_argument("--pool", type=int, default=4096, help="synthetic images to draw batches from")
    parser.add_argument("--val-images", type=int, default=1024, help="images timed for the cluster validation pass")
    parser.add_argument("--mining-n", type=int, nargs="+", default=None)
    parser.add_argument("--mining-d", type=int, nargs="+", default=None)
    parser.add_argument("--mining-queries", type=int, default=None,
                        help="time this many queries and scale to N (default: all, except 50k of N=200k on CPU)")
    parser.add_argument("--knn-chunk", type=int, default=512)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--previous-defaults", action="store_true",
                        help="also time each stage with the CPU defaults of before (fp32, contiguous, glibc's heap) "
                             "right after, and print the speed-up")
    parser.add_argument("--baseline", action="store_true", help="also time the original-style pretext and SCAN "
                        "steps (benchmarks/original_style.py) right after ours, and print the ratios")
    parser.add_argument("--validation-n", type=int, nargs="+", default=[10_000, 50_000])
    args = parser.parse_args(argv)
    args.channels_last = {"auto": "auto", "true": True, "false": False}[args.channels_last]
    args.device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                               "cpu" if args.device == "auto" else args.device)
    if args.quick:
        wanted = args.only or ["pretext", "cluster", "mining"]
        args.mining_n, args.mining_d = args.mining_n or [50_000], args.mining_d or [128]
    else:
        wanted = args.only or [*STAGES, "mining", "validation"]
        args.mining_n, args.mining_d = args.mining_n or [10_000, 50_000, 200_000], args.mining_d or [128, 512]

    def emit(line: dict) -> None:
        print(json.dumps(line), flush=True)

    emit(machine(args.device))
    keep_freed_memory()  # as every `scan` run does (scan.heap)
    for backbone in args.backbones:
        for stage in STAGES:
            if stage in wanted:
                for batch in stage_batches(args, stage, backbone):
                    line = run_stage(args, stage, backbone, batch)
                    if args.previous_defaults:
                        line.update(run_previous_defaults(args, stage, backbone, batch, line))
                    emit(line)
                    if args.baseline and stage in ("pretext", "cluster"):
                        with glibc_heap():  # the original's process never calls mallopt
                            emit(run_baseline(args, stage, backbone, batch, line))
    if "mining" in wanted:
        for n in args.mining_n:
            for d in args.mining_d:
                sub = copy.copy(args)
                if args.mining_queries is None and args.device.type == "cpu" and n > 50_000:
                    sub.mining_queries = 50_000
                emit(run_mining(sub, n, d))
    if "validation" in wanted:
        from validation_loss import measure

        for n in args.validation_n:
            emit(measure(n, args.device, "ours"))
            if n <= 10_000:
                emit(measure(n, args.device, "original_nxn"))


if __name__ == "__main__":
    sys.exit(main())
