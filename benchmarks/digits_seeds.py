"""Quality and wall time of the default `digits` preset over several seeds.

Runs `scan run --seed S` for each seed in its own run directory (a fresh process each, so the
wall time includes start-up and data loading) and prints one JSON object per seed, then one with
the mean and standard deviation. Usage:
    python benchmarks/digits_seeds.py [--seeds 0 1 2] [--out DIR] [KEY=VALUE ...]
KEY=VALUE overrides go to every run (e.g. runtime.precision=bf16 runtime.channels_last=true).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="scan-digits-"))
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    rows = []
    for seed in args.seeds:
        out = root / f"seed{seed}"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scan", "run", "--seed", str(seed), "--out", str(out), "--device", "cpu",
                        *args.overrides],
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        metrics = json.loads((out / "metrics.json").read_text())
        row = {"benchmark": "digits_seeds", "seed": seed, "overrides": args.overrides, "wall_s": round(wall, 1), "machine": machine,
               "neighbor_accuracy": metrics["mine"]["neighbor_accuracy"],
               **{f"{step}_{k}": metrics[step][k] for step in ("cluster", "selflabel") for k in ("acc", "nmi", "ari")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"benchmark": "digits_seeds", "seeds": args.seeds, "overrides": args.overrides}
    for key in ("selflabel_acc", "selflabel_nmi", "selflabel_ari", "cluster_acc", "wall_s"):
        values = [r[key] for r in rows]
        summary[f"{key}_mean"] = statistics.mean(values)
        summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
