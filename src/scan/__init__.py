"""scan: learning to classify images without labels (SCAN, ECCV 2020)."""

from scan.errors import ScanError

__version__ = "0.1.0"


def run(preset: str = "digits", **kwargs):
    """Run the whole pipeline in Python; see :func:`scan.pipeline.run_pipeline` for arguments."""
    from scan.config import build_config
    from scan.pipeline import run_pipeline

    overrides = kwargs.pop("overrides", [])
    out = kwargs.pop("out", None)
    force = kwargs.pop("force", False)
    cfg = build_config(preset, overrides=overrides, **kwargs)
    return run_pipeline(cfg, out=out, force=force)


__all__ = ["ScanError", "run", "__version__"]
