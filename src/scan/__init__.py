"""scan: learning to classify images without labels (SCAN, ECCV 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scan.errors import ScanError

__version__ = "0.1.0"


def run(
    preset: str = "digits",
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    data: str | None = None,
    clusters: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    force: bool = False,
) -> dict:
    """Run every stage and evaluate, as `scan run` does; returns the metrics dict of metrics.json."""
    from scan.config import build_config
    from scan.pipeline import run_pipeline

    cfg = build_config(preset, overrides=overrides, data=data, clusters=clusters, seed=seed, device=device)
    return run_pipeline(cfg, out=out, force=force)


def load(path: str | Path, device: str = "auto"):
    """The clustering model of a run directory (its final step: self-label, else SCAN) or of a
    folder with an exported model.safetensors + model.json, as a `scan.predict.ClusterModel`.

    `load(RUN).predict(images)` takes image files/folders or a uint8 array N×H×W, N×H×W×C or
    N×C×H×W (any size) and returns `Predictions` with `clusters` (int64 N) and `probs`
    (float32 N×K); for files also `paths` (the N files read) and `skipped` (unreadable ones).
    """
    from scan.predict import load as load_model

    return load_model(path, device)


__all__ = ["ScanError", "load", "run", "__version__"]
