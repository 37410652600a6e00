"""`--clusters auto` on finished runs: the K estimate from each run's cached features and mined
neighbours, as `scan run ... --clusters auto` makes it (same function and settings), without
training the cluster stage. One JSON line per run and seed of the heads: the chosen K, the stability
curve and the seconds the estimate took. Nothing is written to the runs.

    for s in 0 1 2; do
      scan pretext mnist --data ../shared/data/mnist.npz --seed $s --out runs/mnist-s$s
      scan mine mnist --data ../shared/data/mnist.npz --seed $s --out runs/mnist-s$s
    done
    python benchmarks/kestimate.py runs/mnist-s0 runs/mnist-s1 runs/mnist-s2
    python benchmarks/kestimate.py runs/mnist-s0 --seeds 0 1 2    # the heads seeded 0, 1, 2

By default the heads are seeded with the run's seed, as in `scan run --clusters auto`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Iterator

from scan.checkpoint import RunDir
from scan.kestimate import estimate_run
from scan.rundir import read_config


def runs_parser(description: str) -> argparse.ArgumentParser:
    """A command line that names run directories (`runs`); scripts add their own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories whose mine stage has finished")
    return parser


def mined_runs(roots: list[Path]) -> Iterator[tuple[Path, RunDir]]:
    """The run directories `roots`, each checked to have finished mining."""
    for root in roots:
        run = RunDir(root)
        if not run.done("mine").is_file():
            raise SystemExit(f"{root}: the mine stage has not finished; run `scan mine` on it first")
        yield root, run


def main() -> None:
    parser = runs_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of the heads (default: the run's)")
    args = parser.parse_args()
    for root, run in mined_runs(args.runs):
        cfg = read_config(run)
        for seed in args.seeds or [cfg.seed]:
            start = time.perf_counter()
            estimate = estimate_run(cfg, run, seed)
            seconds = time.perf_counter() - start
            print(json.dumps({"benchmark": "kestimate", "run": str(root), "preset": cfg.preset, "seed": cfg.seed,
                              "heads_seed": seed, "k": estimate.k, "ks": estimate.ks,
                              "stability": [round(v, 4) for v in estimate.stability], "seconds": round(seconds, 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
