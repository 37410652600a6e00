"""Reading images for training: from memory against streamed from the decode cache on disk.

Writes N random uint8 C×S×S images as an .npy file (the layout of scan's decode cache), then reads
one epoch of shuffled batches three ways: indexing an in-memory tensor, and through
`image_batches` from `DiskImages` with 0 and with W DataLoader workers. Prints one JSON object
per way: images/s, and the main process's peak anonymous memory (RssAnon: what a streamed run
has to hold; the file's pages are in the page cache, which the kernel can reclaim). The page
cache is warm after the file is written: cold reads depend on the disk.

    python benchmarks/stream.py [--n 20000] [--size 96] [--batch 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from scan.data.stream import DiskImages, image_batches
from scan.training.batches import shuffled_batches
from scan.training.context import RunContext, Runtime


def rss_anon_mb() -> float:
    """Anonymous resident memory of this process in MB (Linux /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakSampler:
    """Samples RssAnon every 5 ms in a thread; `peak` is the largest value above the start."""

    def __enter__(self) -> PeakSampler:
        self.start, self.peak, self.running = rss_anon_mb(), 0.0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_anon_mb() - self.start)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()


def epoch(images, batch: int, workers: int) -> tuple[float, float]:
    """(images per second, peak MB) of reading one shuffled epoch of `images`, after an untimed
    one (first-call costs). Each epoch starts its own workers, as a stage's epoch does."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    for _ in image_batches(images, shuffled_batches(RunContext(Runtime(device)), len(images), batch), device, workers):
        pass
    with PeakSampler() as peak:
        start = time.perf_counter()
        count = sum(len(pixels) for _, pixels in image_batches(images, shuffled_batches(RunContext(Runtime(device)), len(images), batch), device, workers))
        seconds = time.perf_counter() - start
    return count / seconds, peak.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scan-stream-") as folder:
        path = Path(folder) / "images.npy"
        shape = (args.n, args.channels, args.size, args.size)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        rng = np.random.default_rng(0)
        for start in range(0, args.n, 1024):
            out[start:start + 1024] = rng.integers(0, 256, (min(1024, args.n - start), *shape[1:]), dtype=np.uint8)
        out.flush()
        del out
        disk = DiskImages(path)
        common = {"benchmark": "stream", "n": args.n, "image": f"{args.channels}x{args.size}x{args.size}",
                  "dataset_mb": round(disk.nbytes / 2**20, 1), "batch": args.batch, "threads": torch.get_num_threads()}
        memory = disk.load()
        rate, peak = epoch(memory, args.batch, 0)
        print(json.dumps({**common, "source": "memory", "workers": 0, "images_per_s": round(rate), "peak_anon_mb": round(peak, 1)}))
        del memory
        for workers in sorted({0, args.workers}):
            rate, peak = epoch(disk, args.batch, workers)
            print(json.dumps({**common, "source": "disk", "workers": workers, "images_per_s": round(rate),
                              "peak_anon_mb": round(peak, 1)}), flush=True)


if __name__ == "__main__":
    main()
