"""How the self-label safeguard's agreement check decides on finished runs, against test ACC.

For each finished run directory with both a SCAN and a self-label model, recomputes both models'
train-split assignments, the change in neighbour agreement and its standard error
(`scan.stages.safeguard.agreement_change`), and the decision under `--z` and `--max-drop`; then
prints one JSON line per run (the gain, its standard error, z, the decision, both models' test ACC
from metrics.json) and a summary line: how many self-label models the rule keeps, how many of those
have a lower test ACC than their SCAN model, how many it sets aside that were better, and the mean
final ACC under the rule, under "always self-label" and under "never". The decision does not change
the training, so this gives exactly what runs with these settings would have chosen. Usage:

    python benchmarks/safeguard.py [--z 1.645] [--max-drop 0] RUN [RUN ...]

Runs whose config this version of scan cannot read (keys since removed) are skipped with a line on
stderr. The images are read as each run's config says (its --data file must still be there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys

import torch

from scan.checkpoint import RunDir, read_json
from scan.config import config_from_dict, load_config_file
from scan.errors import ScanError
from scan.pipeline import load_data
from scan.stages.artifacts import load_clustering_model, load_neighbors
from scan.stages.safeguard import agreement_change, compare_agreement
from scan.stages.selflabel import train_probs
from scan.training.context import RunContext


def judge(path: str, z: float, max_drop: float) -> dict:
    """One run's agreement change, the decision under (z, max_drop) and both models' test ACC."""
    run = RunDir(path)
    cfg = config_from_dict(load_config_file(str(run.config)))
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON lines only
        data = load_data(cfg)
    ctx = RunContext.create("cpu", cfg.runtime)
    probs = []
    for step in ("cluster", "selflabel"):
        model, head = load_clustering_model(run, step)
        model.keep_head(head)
        probs.append(train_probs(ctx, cfg, model, data))
    change = agreement_change(*probs, load_neighbors(run)[0])
    metrics = read_json(run.root / "metrics.json")
    keep = compare_agreement(change, max_drop, z) is None
    return {"benchmark": "safeguard", "run": path, "images": change.images, "gain": round(change.gain, 5),
            "stderr": round(change.stderr, 5), "z": round(change.gain / change.stderr, 2) if change.stderr else None,
            "keeps_selflabel": keep, "cluster_acc": metrics["cluster"]["acc"], "selflabel_acc": metrics["selflabel"]["acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--z", type=float, default=1.645, help="selflabel.agreement_z")
    parser.add_argument("--max-drop", type=float, default=0.0, help="selflabel.max_agreement_drop")
    args = parser.parse_args()
    rows = []
    for path in args.runs:
        try:
            row = judge(path, args.z, args.max_drop)
        except (ScanError, KeyError, FileNotFoundError) as err:
            print(f"skipped {path}: {err}", file=sys.stderr)
            continue
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not rows:
        sys.exit("no run with both a SCAN and a self-label model")

    def final_mean(keep) -> float:
        return round(statistics.mean(r["selflabel_acc"] if keep(r) else r["cluster_acc"] for r in rows), 4)

    kept = [r for r in rows if r["keeps_selflabel"]]
    print(json.dumps({"benchmark": "safeguard", "summary": True, "z": args.z, "max_drop": args.max_drop,
                      "runs": len(rows), "kept": len(kept),
                      "kept_but_lower": sum(r["selflabel_acc"] < r["cluster_acc"] for r in kept),
                      "set_aside_but_higher": sum(r["selflabel_acc"] > r["cluster_acc"] for r in rows if r not in kept),
                      "final_acc_mean": final_mean(lambda r: r["keeps_selflabel"]),
                      "always_selflabel_acc_mean": final_mean(lambda r: True),
                      "never_selflabel_acc_mean": final_mean(lambda r: False)}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
