"""A random subset of an .npz data set (x_train, y_train, x_test, y_test [, classes]), for checking
that a preset is a recipe and not a fit to one file: e.g. MNIST cut to the size of the sklearn
digits, then run with the `digits` preset (which brings it to 8×8). Usage:

    python benchmarks/subset_npz.py ../shared/data/mnist.npz /tmp/mnist1797.npz --train 1437 --test 360 [--seed 0]
    python benchmarks/quality.py --seeds 0 1 2 --data /tmp/mnist1797.npz

Prints one JSON line: the output file and the class counts of each split.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--train", type=int, required=True, help="train images to draw")
    parser.add_argument("--test", type=int, required=True, help="test images to draw")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with np.load(args.source) as data:
        arrays = {key: data[key] for key in data.files}
    picked = {}
    for split, count in (("train", args.train), ("test", args.test)):
        total = len(arrays[f"y_{split}"])
        if not 0 < count <= total:
            raise SystemExit(f"--{split} must be in 1..{total}, got {count}")
        index = rng.choice(total, count, replace=False)
        picked[f"x_{split}"], picked[f"y_{split}"] = arrays[f"x_{split}"][index], arrays[f"y_{split}"][index]
    if "classes" in arrays:
        picked["classes"] = arrays["classes"]
    np.savez_compressed(args.out, **picked)
    print(json.dumps({"benchmark": "subset_npz", "out": args.out, "seed": args.seed,
                      **{f"{split}_per_class": np.bincount(picked[f"y_{split}"]).tolist() for split in ("train", "test")}}))


if __name__ == "__main__":
    main()
