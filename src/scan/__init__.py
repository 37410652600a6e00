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
    """Run every stage and evaluate, as `scan run` does (the same default run directory); returns
    the metrics dict of metrics.json. For a model back, use `scan.SCAN(...).fit(X)`."""
    from scan.api import resolve_out
    from scan.config import build_config
    from scan.console import warn_busy_cores
    from scan.pipeline import run_pipeline

    cfg = build_config(preset, overrides=overrides, data=data, clusters=clusters, seed=seed, device=device)
    out = resolve_out(cfg, out, force)
    warn_busy_cores()
    return run_pipeline(cfg, out=out, force=force)


from scan.api import SCAN, load  # noqa: E402 - after __version__, which the CLI imports

__all__ = ["SCAN", "ScanError", "load", "run", "__version__"]
