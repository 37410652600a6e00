"""Frozen features computed once: float16 on disk, in order, resumed after an interruption for the
same inputs and recomputed for other ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scan.models import features as features_module
from scan.models.features import extract_features


def identity_view(x: torch.Tensor) -> torch.Tensor:
    return x.float()


class Network:
    """Mean pixel per channel (B×C), counting the images it sees; fails after `fail_after` calls."""

    def __init__(self, fail_after: int | None = None):
        self.seen, self.calls, self.fail_after = 0, 0, fail_after

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls == self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.seen += len(x)
        return x.mean(dim=(2, 3))


@pytest.fixture
def images():
    return torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)


def test_features_come_back_in_float32_and_are_written_as_float16_in_order(tmp_path, images):
    out = extract_features(Network(), images, identity_view, 8, torch.device("cpu"), tmp_path / "f.npy", workers=0)
    expected = images.float().mean(dim=(2, 3))
    assert torch.equal(out, expected)  # the float32 features; the file keeps float16
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), expected.half().numpy())
    assert not list(tmp_path.glob("*partial*"))


def test_an_interrupted_extraction_resumes_where_it_stopped(tmp_path, images, monkeypatch):
    monkeypatch.setattr(features_module, "CHECKPOINT_ROWS", 16)
    path = tmp_path / "f.npy"
    with pytest.raises(KeyboardInterrupt):
        extract_features(Network(fail_after=3), images, identity_view, 8, torch.device("cpu"), path, key="a", workers=0)
    assert not path.exists()  # 24 rows computed, 16 recorded
    resumed = Network()
    out = extract_features(resumed, images, identity_view, 8, torch.device("cpu"), path, key="a", workers=0)
    assert resumed.seen == 50 - 16
    assert torch.equal(out, images.float().mean(dim=(2, 3)))  # exactly the uninterrupted features


def test_a_partial_file_of_other_inputs_is_not_resumed(tmp_path, images, monkeypatch):
    monkeypatch.setattr(features_module, "CHECKPOINT_ROWS", 16)
    path = tmp_path / "f.npy"
    with pytest.raises(KeyboardInterrupt):
        extract_features(Network(fail_after=3), images, identity_view, 8, torch.device("cpu"), path, key="a", workers=0)
    fresh = Network()
    extract_features(fresh, images, identity_view, 8, torch.device("cpu"), path, key="b", workers=0)
    assert fresh.seen == 50
