"""Quality and wall time of a preset over several seeds.

Runs `scan run PRESET --seed S` for each seed in its own run directory (a fresh process each, so
the wall time includes start-up and data loading) and prints one JSON object per run — test ACC,
NMI, ARI of the final model and of each clustering step, the top-k neighbour accuracy, which step
is final (and why, when self-labelling was set aside), the stage times — then a summary line with
the mean ± std, min and median of the final ACC and of the wall time. Usage:

    python benchmarks/quality.py [--preset digits] [--seeds 0 1 2] [--data PATH] [--out DIR] [KEY=VALUE ...]
    python benchmarks/quality.py --preset cifar10_cpu --data ../shared/data/cifar10.npz --seeds 0 1 2

KEY=VALUE overrides go to every run (e.g. runtime.precision=bf16 cluster.restarts=3).
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

from scan.training.context import native_bf16_cpu_feature

STEPS = ("cluster", "selflabel")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run_once(preset: str, seed: int, out: Path, data: str | None, overrides: list[str]) -> dict:
    """One `scan run` in a fresh process; its metrics as one flat record."""
    command = [sys.executable, "-m", "scan", "run", preset, "--seed", str(seed), "--out", str(out), *overrides]
    if data is not None:
        command += ["--data", data]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics.get("final", {}).get("step", "selflabel" if "selflabel" in metrics else "cluster")
    row = {"benchmark": "quality", "preset": preset, "seed": seed, "overrides": overrides, "wall_s": round(wall, 1),
           "final_step": final, **{k: metrics[final].get(k) for k in ("acc", "nmi", "ari")}}
    if "reason" in metrics.get("final", {}):
        row["final_reason"] = metrics["final"]["reason"]
    if "mine" in metrics:
        row["neighbor_accuracy"] = metrics["mine"]["neighbor_accuracy"]
    for step in STEPS:
        for key in ("acc", "nmi", "ari"):
            if key in metrics.get(step, {}):
                row[f"{step}_{key}"] = metrics[step][key]
    row["seconds"] = {k: round(v, 1) for k, v in metrics.get("seconds", {}).items()}
    return row


def summarize(rows: list[dict], **fields) -> dict:
    """mean ± std, min and median of the final ACC (and NMI, ARI) and the wall time over `rows`."""
    summary = {"benchmark": "quality", "summary": True, "runs": len(rows), **fields}
    for key in ("acc", "nmi", "ari", "wall_s"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            summary[f"{key}_mean"] = round(statistics.mean(values), 4)
            summary[f"{key}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
            summary[f"{key}_min"] = round(min(values), 4)
            summary[f"{key}_median"] = round(statistics.median(values), 4)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=None, help="as scan run --data")
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix=f"scan-{args.preset}-"))
    # native_bf16 decides what runtime.precision=auto does on a CPU (scan.training.context).
    machine = {"cpu": cpu_name(), "native_bf16": native_bf16_cpu_feature(), "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    rows = []
    for seed in args.seeds:
        row = run_once(args.preset, seed, root / f"seed{seed}", args.data, args.overrides)
        row["machine"] = machine
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps(summarize(rows, preset=args.preset, seeds=args.seeds, overrides=args.overrides, machine=machine)))


if __name__ == "__main__":
    main()
