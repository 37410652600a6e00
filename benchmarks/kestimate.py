"""`--clusters auto` on finished runs: the K estimate from each run's cached features and mined
neighbours, as `scan run ... --clusters auto` makes it (same function, seeded by the run's seed),
without training the cluster stage. One JSON line per run: the chosen K, the stability curve and
the seconds the estimate took.

    for s in 0 1 2; do
      scan pretext mnist --data ../shared/data/mnist.npz --seed $s --out runs/mnist-s$s
      scan mine mnist --data ../shared/data/mnist.npz --seed $s --out runs/mnist-s$s
    done
    python benchmarks/kestimate.py runs/mnist-s0 runs/mnist-s1 runs/mnist-s2

A run that already holds an estimate (RUN/mine/clusters_auto.json) reports it unchanged; the
estimate is written there as a `--clusters auto` run would, so a later
`scan run RUN --clusters auto` uses the same K.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Iterator

from scan.checkpoint import RunDir
from scan.kestimate import read_estimate, resolve_clusters
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
    for root, run in mined_runs(runs_parser(__doc__.splitlines()[0]).parse_args().runs):
        cfg = dataclasses.replace(read_config(run), clusters="auto")
        start = time.perf_counter()
        k = resolve_clusters(cfg, run).clusters
        seconds = time.perf_counter() - start
        estimate = read_estimate(run)
        print(json.dumps({"benchmark": "kestimate", "run": str(root), "preset": cfg.preset, "seed": cfg.seed, "k": k,
                          "ks": estimate["ks"], "stability": [round(v, 4) for v in estimate["stability"]],
                          "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
