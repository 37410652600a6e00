"""Features of a frozen network, computed once: batched, written to disk as they come (so they
never need the images in memory, which may be streamed), resumable after an interruption, with the
throughput in the log.

The output is an .npy file N×D (float16). While it is being written it is `PATH.partial.npy`, in
float32, so that a resumed extraction returns exactly the features of an uninterrupted one (mining
searches the float32 features; a search on float16-rounded ones finds other neighbours), with a
JSON sidecar `PATH.partial.json` recording how many rows are done and for which inputs (`key`,
e.g. the stage's config fingerprint); a rerun with the same key continues from there, another key
starts over. The finished features are written as float16 and the partial file removed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scan.checkpoint import save_json, save_npy
from scan.console import echo, progress
from scan.data.stream import Images, image_batches

# Rows between two progress records (and the granularity of a resume): a few seconds of work.
CHECKPOINT_ROWS = 8192


def _partial_paths(path: Path) -> tuple[Path, Path]:
    stem = path.name.removesuffix(".npy")
    return path.with_name(f"{stem}.partial.npy"), path.with_name(f"{stem}.partial.json")


def _resume_point(array_path: Path, meta_path: Path, key: str, n: int) -> tuple[int, int | None]:
    """(rows already written, their dimension) of a partial file for the same key and N, else (0, None)."""
    if not (array_path.is_file() and meta_path.is_file()):
        return 0, None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return 0, None
    if meta.get("key") != key or meta.get("n") != n:
        return 0, None
    return int(meta["done"]), int(meta["dim"])


@torch.no_grad()
def extract_features(fn: Callable[[torch.Tensor], torch.Tensor], images: Images,
                     view: Callable[[torch.Tensor], torch.Tensor], batch_size: int, device: torch.device,
                     path: str | Path, key: str = "", workers: int = 4, what: str = "features") -> torch.Tensor:
    """fn(view(images)) for every image, in order, written to `path` (float16 N×D .npy).

    fn: float B×C×H×W -> B×D (a frozen network in eval mode); images: uint8 N×C×H×W in memory or
    DiskImages (read by `workers` DataLoader processes); key: identifies the inputs, so a partial
    file is resumed only for the same network and images. Returns the features as a float32 N×D
    tensor on CPU (the float32 values; the file keeps them as float16).
    """
    path = Path(path)
    array_path, meta_path = _partial_paths(path)
    n = len(images)
    start, dim = _resume_point(array_path, meta_path, key, n)
    array = np.lib.format.open_memmap(array_path, mode="r+") if start else None
    if start:
        echo(f"{what}: resuming after {start}/{n} images")
    rows = range(start, n, batch_size)
    batches = image_batches(images, (torch.arange(s, min(n, s + batch_size), device=device) for s in rows),
                            device, workers)
    began, done, last_saved = time.perf_counter(), start, start
    for index, pixels in progress(batches, len(rows), what):
        out = fn(view(pixels)).float().cpu().numpy()
        if array is None:
            dim = out.shape[1]
            array_path.parent.mkdir(parents=True, exist_ok=True)
            array = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.float32, shape=(n, dim))
        array[done:done + len(out)] = out
        done += len(out)
        if done - last_saved >= CHECKPOINT_ROWS or done == n:
            array.flush()
            save_json({"key": key, "n": n, "dim": dim, "done": done}, meta_path)
            last_saved = done
    seconds = time.perf_counter() - began
    if done > start:
        echo(f"{what}: {done - start} images in {seconds:.1f}s ({(done - start) / max(seconds, 1e-9):.1f} images/s), "
             f"{n}×{dim} float16 -> {path.name}")
    if array is None:  # n == 0
        raise ValueError("no images to extract features from")
    features = torch.from_numpy(np.array(array))
    del array
    save_npy(features.half().numpy(), path)
    array_path.unlink()
    meta_path.unlink(missing_ok=True)
    return features
