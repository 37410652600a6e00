"""Would trial restarts (R restarts of T epochs, then only the one with the lowest validation loss
continues) pick the right restart? Read the cluster stage's history of finished runs and compare,
per restart, the lowest validation loss within its first T epochs with the lowest it reached in
all its epochs. One JSON line per run:

    {"run": ..., "trial_epochs": T, "restarts": {"1": {"after_trial": -2.19, "final": -2.23}, ...},
     "trial_pick": 1, "final_pick": 1, "acc": 0.983}

`trial_pick` is the restart a trial of T epochs would continue, `final_pick` the one with the
lowest loss after training fully; `acc` is the run's final test ACC where labels were known. For
runs with one restart (a seed study), compare `after_trial` across runs: a poor solution is
visible early when the poor runs' `after_trial` losses lie above the good ones'.

    python benchmarks/trial_ranking.py --trial-epochs 4 runs/mnist-s0 runs/mnist-s1 runs/mnist-s2

benchmarks/README.md ("Trial restarts") has what it found on MNIST and digits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scan.checkpoint import RunDir, read_json
from scan.report import read_history


def restart_losses(history: list[dict], trial_epochs: int) -> dict[int, dict[str, float]]:
    """Per restart (1-based), the lowest validation loss within its first `trial_epochs` epochs
    and over all its epochs. history: the cluster stage's history.jsonl records."""
    per_restart: dict[int, list[float]] = {}
    for record in history:
        per_restart.setdefault(record.get("restart", 1), []).append(min(record["val_loss"]))
    return {r: {"after_trial": round(min(losses[:trial_epochs]), 4), "final": round(min(losses), 4)}
            for r, losses in per_restart.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories whose cluster stage has finished")
    parser.add_argument("--trial-epochs", type=int, required=True, help="T, the epochs of a trial")
    args = parser.parse_args()
    for root in args.runs:
        run = RunDir(root)
        losses = restart_losses(read_history(run.history("cluster")), args.trial_epochs)
        metrics = read_json(run.metrics) if run.metrics.is_file() else {"final": {}}
        print(json.dumps({
            "run": str(root), "trial_epochs": args.trial_epochs, "restarts": losses,
            "trial_pick": min(losses, key=lambda r: losses[r]["after_trial"]),
            "final_pick": min(losses, key=lambda r: losses[r]["final"]),
            "acc": metrics.get(metrics["final"].get("step"), {}).get("acc"),
        }))


if __name__ == "__main__":
    main()
