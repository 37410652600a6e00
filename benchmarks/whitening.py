"""Neighbour accuracy of finished runs' mined features under PCA whitening with a power
(`mine.whitening`, scan.whitening): one JSON line per run with the top-k accuracy for each power
(0 = plain cosine, what mining did before), from the features the run's mine stage cached and the
data set's train labels. Nothing is written to the runs. The 14 runs of benchmarks/README.md
("Whitened mining"), five powers each, took 3.6 minutes together on the 2-core Intel Xeon.

    python benchmarks/whitening.py runs/cifar-s0 runs/mnist-s0 --powers 0 0.25 0.5 0.75 1
"""

from __future__ import annotations

import json

import torch

from kestimate import mined_runs, runs_parser
from scan.data.sources import load_source
from scan.knn import knn, neighbor_accuracy
from scan.rundir import read_config
from scan.stages.artifacts import load_features
from scan.whitening import search_space


def main() -> None:
    parser = runs_parser(__doc__.splitlines()[0])
    parser.add_argument("--powers", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--k", type=int, default=20, help="neighbours per image (default 20, the presets' mine.k)")
    args = parser.parse_args()
    for root, run in mined_runs(args.runs):
        cfg = read_config(run)
        labels = load_source(cfg.data, stream=False).train_labels
        if labels is None:
            raise SystemExit(f"{root}: its data set has no labels to score neighbours with")
        features = load_features(run)
        accuracy = {}
        for power in args.powers:
            space, _ = search_space(features, power)
            accuracy[f"{power:g}"] = round(neighbor_accuracy(knn(space, args.k)[0], labels), 4)
        print(json.dumps({"benchmark": "whitening", "run": str(root), "preset": cfg.preset, "seed": cfg.seed,
                          "features": f"{features.shape[1]}-d {cfg.mine.features}", "k": args.k,
                          "neighbor_accuracy": accuracy}), flush=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
