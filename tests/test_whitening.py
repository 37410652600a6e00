"""PCA whitening with a power before the neighbour search: its covariance against numpy's
eigen-decomposition, the mapping of a second split, and a case where it finds the right neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scan.whitening
from scan.config import build_config
from scan.errors import ScanError
from scan.knn import knn, neighbor_accuracy
from scan.whitening import power_whiten


def _anisotropic(n: int = 400, d: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.array([9.0, 3.0, 1.0, 0.5, 0.2])[:d] + 2.0


def _normalised_centred(x: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x - x.mean(0)


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_whitened_covariance_has_the_eigenvalues_to_the_power_one_minus_power(power):
    x = _anisotropic()
    eigenvalues = np.linalg.eigvalsh(np.cov(_normalised_centred(x), rowvar=False, bias=True))
    white, none = power_whiten(torch.tensor(x, dtype=torch.float32), power)
    assert none is None and white.dtype == torch.float32 and white.shape == x.shape
    cov = np.cov(white.double().numpy(), rowvar=False, bias=True)
    # Scaling axis i by λ_i^(-p/2) leaves variance λ_i^(1-p) along it and no covariance across axes.
    np.testing.assert_allclose(np.sort(np.diag(cov)), np.sort(eigenvalues ** (1 - power)), rtol=1e-4)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-6)
    np.testing.assert_allclose(white.mean(0).numpy(), 0, atol=1e-5)


def test_power_zero_is_a_rotation_of_the_normalised_centred_features():
    x = _anisotropic(50)
    white, _ = power_whiten(torch.tensor(x), 0.0)
    base = _normalised_centred(x)
    np.testing.assert_allclose(white.numpy() @ white.numpy().T, base @ base.T, atol=1e-5)


def test_a_second_split_is_mapped_with_the_first_splits_mean_and_axes():
    train, test = torch.tensor(_anisotropic(300)), torch.tensor(_anisotropic(40, seed=1))
    white_train, white_test = power_whiten(train, 0.5, test)
    _, again = power_whiten(train, 0.5, train)
    np.testing.assert_allclose(again, white_train, atol=1e-6)
    # An affine map fitted on train: the same rows of train and test map to the same points.
    both, mapped = power_whiten(train, 0.5, torch.cat([test, train[:5]]))
    np.testing.assert_allclose(mapped[-5:], both[:5], atol=1e-6)
    assert white_test.shape == (40, 5) and not torch.allclose(white_test, power_whiten(test, 0.5)[0], atol=1e-3)


def test_whitening_finds_the_classes_that_a_dominant_nuisance_direction_hides():
    """Two classes apart along a direction of small variance; two large nuisance directions
    dominate the angles between the features. Whitened, the class direction counts as much."""
    rng = np.random.default_rng(0)
    n = 400
    labels = np.repeat([0, 1], n // 2)
    x = np.stack([10 + rng.normal(size=n), 3 * rng.normal(size=n), 3 * rng.normal(size=n),
                  np.where(labels == 1, 0.5, -0.5) + 0.1 * rng.normal(size=n)], axis=1)
    feats, y = torch.tensor(x, dtype=torch.float32), torch.tensor(labels)
    accuracy = [neighbor_accuracy(knn(feats, 10)[0], y)]
    accuracy += [neighbor_accuracy(knn(power_whiten(feats, p)[0], 10)[0], y) for p in (0.5, 1.0)]
    assert accuracy[0] < 0.8 < 0.95 < accuracy[1] < accuracy[2]  # measured: 0.765, 0.962, 0.984


def test_power_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="whitening power"):
        power_whiten(torch.ones(4, 2), 1.5)
    with pytest.raises(ScanError, match=r"mine.whitening must be in \[0, 1\]"):
        build_config("digits", overrides=["mine.whitening=-0.5"])


def test_the_covariance_summed_in_blocks_of_rows_equals_one_block(monkeypatch):
    x = torch.tensor(_anisotropic(300))
    whole, _ = power_whiten(x, 0.5)
    monkeypatch.setattr(scan.whitening, "_BLOCK_ROWS", 7)
    blocked, _ = power_whiten(x, 0.5)
    # Compared as inner products: an eigenvector's sign is arbitrary.
    np.testing.assert_allclose(blocked @ blocked.T, whole @ whole.T, atol=1e-5)
