"""Time and peak memory of the label-free validation SCAN loss: ours (O(N·k), chunked over the
mined neighbour lists) against the original's form (the full N×N matrix P·Pᵀ, then BCE over each
sample's self pair and its 5 neighbours), which is run only where it fits (N ≤ --nxn-max).

Prints one JSON object per line (keys as benchmarks/stages.py: benchmark, stage, device, backbone,
batch, images_per_s, augment_share, peak_mb, plus n, k, seconds, method, and for the N×N form
nxn_matrix_mb, the size of that matrix in float32). The probabilities (K = 10) and neighbours are
random; only time and memory are measured here (tests/test_losses.py checks the value).

    python benchmarks/validation_loss.py [--n 10000 50000] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stages import PeakMemory, sync  # noqa: E402

from scan.losses import entropy_of_mean, validation_scan_loss  # noqa: E402


def original_validation_loss(probs: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """The original's scan_evaluate: S = P·Pᵀ (N×N), BCE(S[n, j], 1) over j in [n] + neighbours[n]."""
    n = probs.shape[0]
    similarity = probs @ probs.T
    pairs = torch.cat([torch.arange(n, device=probs.device)[:, None], neighbors], dim=1)
    sim = similarity.gather(1, pairs)
    consistency = F.binary_cross_entropy(sim.clamp(0, 1), torch.ones_like(sim))
    return consistency - entropy_of_mean(probs)


def measure(n: int, device: torch.device, method: str, k: int = 5, clusters: int = 10) -> dict:
    g = torch.Generator().manual_seed(n)
    probs = torch.randn(n, clusters, generator=g).softmax(1).to(device)
    neighbors = torch.randint(n, (n, k), generator=g).to(device)
    fn = (lambda: validation_scan_loss(probs, neighbors, 1.0)) if method == "ours" else (
        lambda: original_validation_loss(probs, neighbors))
    with PeakMemory(device) as mem:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        seconds = time.perf_counter() - start
    return {"benchmark": "validation_loss", "stage": "cluster", "device": device.type, "backbone": None,
            "batch": None, "method": method, "n": n, "k": k, "clusters": clusters,
            "images_per_s": round(n / seconds, 1), "augment_share": 0.0, "peak_mb": round(mem.mb, 1),
            "seconds": round(seconds, 4), "nxn_matrix_mb": round(n * n * 4 / 2**20, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--nxn-max", type=int, default=10_000, help="largest N for the original's N×N form")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    for n in args.n:
        print(json.dumps(measure(n, device, "ours")), flush=True)
        if n <= args.nxn_max:
            print(json.dumps(measure(n, device, "original_nxn")), flush=True)


if __name__ == "__main__":
    main()
