"""Shared fixtures: tiny .npz datasets written into tmp_path, and one tiny finished run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


def tiny_arrays(n_train: int = 30, n_test: int = 10, size: int = 8, classes: int = 3, seed: int = 0) -> dict:
    """Random uint8 grey images N×size×size with integer labels 0..classes-1 (every class present)."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.int64) % classes,
        "x_test": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.int64) % classes,
    }


def feature_blobs(groups: int = 4, per_group: int = 60, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated Gaussian groups of feature vectors (groups·per_group)×dim, and their group
    labels; drawn from torch's global random stream."""
    centres = torch.nn.functional.normalize(torch.randn(groups, dim), dim=1) * 4
    features = (centres[:, None, :] + 0.3 * torch.randn(groups, per_group, dim)).reshape(-1, dim)
    return features, torch.arange(groups).repeat_interleave(per_group)


@pytest.fixture
def make_npz(tmp_path: Path):
    """Factory: make_npz(name, drop=(...), **replace) writes tmp_path/name with the tiny arrays,
    minus the names in `drop`, with arrays in `replace` substituted or added; returns the path."""

    def _make(name: str = "tiny.npz", drop: tuple[str, ...] = (), **replace: np.ndarray) -> Path:
        arrays = tiny_arrays()
        arrays.update(replace)
        for key in drop:
            arrays.pop(key)
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    return _make


@pytest.fixture
def tiny_npz(make_npz) -> Path:
    """30 train / 10 test random 8×8 grey images, 3 classes."""
    return make_npz()


# A few epochs of each stage on digits: seconds, enough for every artefact of a run to exist.
TINY_RUN = ["pretext.epochs=2", "cluster.epochs=2", "selflabel.epochs=1", "selflabel.min_confident=0", "selflabel.max_balance_drop=1", "selflabel.max_agreement_drop=1", "cluster.num_heads=2", "device=cpu"]


@pytest.fixture(scope="session")
def reported_run(tmp_path_factory) -> Path:
    """A finished tiny digits run with its report (assignments.csv), made once per test session.
    Tests that change a run copy it first."""
    import scan
    from scan.cli import main

    out = tmp_path_factory.mktemp("reported_run")
    scan.run("digits", out=out, overrides=TINY_RUN)
    assert main(["report", str(out), "--device", "cpu"]) == 0
    return out
