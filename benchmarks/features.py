"""Feature-extraction throughput of pretrained backbones (the one pass over the images that the
frozen-feature regime needs), with random weights: timing only, nothing is downloaded.

Prints one JSON object per line: first the machine (torch threads, the CPUs this process may use),
then per model

    benchmark, backbone, device, size, batch, batches, images_per_s, seconds

Synthetic uint8 images go through the same weak view (normalisation) and backbone as the mine
stage, through scan.models.features.extract_features, after one warm-up batch. Run it pinned to
one core with one thread to compare with the numbers in the README:

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/features.py
    python benchmarks/features.py --device cuda --batch 256 --batches 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from functools import partial

import torch

from scan.data.augment import weak_view
from scan.models.backbones import build_backbone
from scan.models.features import extract_features

MODELS = ("timm:resnet50", "timm:vit_small_patch16_224")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def measure(name: str, device: torch.device, size: int, batch: int, batches: int) -> dict:
    """images/s of extract_features for backbone `name` on `batches` batches of random images."""
    torch.manual_seed(0)
    backbone = build_backbone(name, 3, img_size=size).to(device).eval()
    view = partial(weak_view, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection
        backbone(view(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)))
    images = torch.randint(0, 256, (batch * batches, 3, size, size), dtype=torch.uint8)
    # extract_features logs its own images/s line; stdout stays JSON lines.
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr):
        start = time.perf_counter()
        extract_features(backbone, images, view, batch, device, f"{folder}/features.npy", workers=0, what=name)
        seconds = time.perf_counter() - start
    return {"benchmark": "features", "backbone": name, "device": str(device), "size": size, "batch": batch,
            "batches": batches, "images_per_s": round(len(images) / seconds, 2), "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    device = torch.device(args.device)
    print(json.dumps({"benchmark": "machine", "cpu": platform.processor() or platform.machine(),
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "cpus_allowed": sorted(os.sched_getaffinity(0))}), flush=True)
    for name in args.models:
        print(json.dumps(measure(name, device, args.size, args.batch, args.batches)), flush=True)


if __name__ == "__main__":
    main()
