"""Losses checked against values computed by hand (plain math / numpy), not against themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scan.losses import EPS, LOG_FLOOR, confidence_ce, multicrop_nt_xent, nt_xent, scan_loss, validation_scan_loss


# ---------------------------------------------------------------------------------------------
# NT-Xent


def _nt_xent_by_hand(z1: list[list[float]], z2: list[list[float]], t: float) -> float:
    """Mean over the 2B anchors of −s(i, pos)/t + log Σ_{j≠i} exp(s(i, j)/t), written out."""
    rows = z1 + z2
    b = len(z1)
    total = 0.0
    for i, zi in enumerate(rows):
        pos = i + b if i < b else i - b
        dot = lambda u, v: sum(a * c for a, c in zip(u, v))  # noqa: E731
        denom = sum(math.exp(dot(zi, zj) / t) for j, zj in enumerate(rows) if j != i)
        total += -dot(zi, rows[pos]) / t + math.log(denom)
    return total / len(rows)


def test_nt_xent_identical_orthogonal_views_closed_form():
    # rows e0, e1, e0, e1 at t = 1: every anchor sees its positive at 1 and two negatives at 0,
    # so each term is −1 + log(e⁰ + e¹ + e⁰) = log(2 + e) − 1.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = nt_xent(z, z.clone(), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(2 + math.e) - 1, abs=1e-6)


@pytest.mark.parametrize("t", [0.5, 0.1])
def test_nt_xent_matches_hand_log_sum_exp(t):
    a, b, c, d = 0.3, 1.2, 2.0, -0.7
    z1 = [[math.cos(a), math.sin(a)], [math.cos(b), math.sin(b)]]
    z2 = [[math.cos(c), math.sin(c)], [math.cos(d), math.sin(d)]]
    expected = _nt_xent_by_hand(z1, z2, t)
    got = nt_xent(torch.tensor(z1), torch.tensor(z2), temperature=t).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_nt_xent_is_symmetric_in_the_two_views():
    g = torch.Generator().manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=1)
    assert nt_xent(z1, z2, 0.2).item() == pytest.approx(nt_xent(z2, z1, 0.2).item(), rel=1e-6)


def _multicrop_by_hand(views: list[list[list[float]]], t: float, global_views: int) -> float:
    """Mean over every (view, image) anchor of the mean over its positives of −log softmax, with
    the pairs of two small crops of one image left out of numerator and denominator, written out."""
    dot = lambda u, v: sum(a * c for a, c in zip(u, v))  # noqa: E731
    rows = [(v, i, z) for v, view in enumerate(views) for i, z in enumerate(view)]
    small = lambda v: v >= global_views  # noqa: E731
    total = 0.0
    for v, i, zi in rows:
        others = [(w, j, zj) for w, j, zj in rows if (w, j) != (v, i) and not (j == i and small(v) and small(w))]
        log_denom = math.log(sum(math.exp(dot(zi, zj) / t) for _, _, zj in others))
        positives = [zj for w, j, zj in others if j == i]
        total += sum(log_denom - dot(zi, zj) / t for zj in positives) / len(positives)
    return total / len(rows)


@pytest.mark.parametrize("views", [3, 4])
def test_multicrop_nt_xent_matches_hand_computation(views):
    # Two full views and one or two small crops of three images: with two small crops, their
    # pair is neither a positive nor a negative.
    g = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(views, 3, 4, generator=g), dim=2)
    expected = _multicrop_by_hand(z.tolist(), 0.5, global_views=2)
    assert multicrop_nt_xent(z, 0.5).item() == pytest.approx(expected, rel=1e-5)


def test_multicrop_nt_xent_with_two_views_is_nt_xent():
    g = torch.Generator().manual_seed(2)
    z = torch.nn.functional.normalize(torch.randn(2, 5, 3, generator=g), dim=2)
    assert multicrop_nt_xent(z, 0.2).item() == pytest.approx(_nt_xent_by_hand(*z.tolist(), 0.2), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# SCAN loss


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _entropy_of_mean(p: np.ndarray) -> float:
    m = np.clip(p.mean(0), EPS, None)
    return float(-(m * np.log(m)).sum())


def test_scan_loss_matches_numpy():
    anchor = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [-0.5, -0.5, 1.5]])
    neighbor = np.array([[1.0, 0.0, 0.0], [0.2, 2.0, -1.0], [0.0, 0.0, 0.0]])
    lam = 2.0
    p, q = _softmax(anchor), _softmax(neighbor)
    consistency = -np.log((p * q).sum(1)).mean()
    entropy = _entropy_of_mean(p)
    out = scan_loss(torch.tensor(anchor), torch.tensor(neighbor), lam)
    assert out.consistency.item() == pytest.approx(consistency, rel=1e-5)
    assert out.entropy.item() == pytest.approx(entropy, rel=1e-5)
    assert out.total.item() == pytest.approx(consistency - lam * entropy, rel=1e-5)


def test_scan_loss_floors_log_of_orthogonal_one_hots_at_minus_100():
    # p = [1, 0] and q = [0, 1] exactly (exp(−1000) underflows to 0): ⟨p, q⟩ = 0, log floored at −100.
    anchor = torch.tensor([[0.0, -1000.0], [0.0, 0.0]])
    neighbor = torch.tensor([[-1000.0, 0.0], [0.0, 0.0]])
    out = scan_loss(anchor, neighbor, entropy_weight=1.0)
    # row 0: −(−100) = 100; row 1: p = q = [½, ½], ⟨p, q⟩ = ½, −log ½ = log 2
    consistency = (100.0 + math.log(2)) / 2
    mean_p = np.array([0.75, 0.25])
    entropy = float(-(mean_p * np.log(mean_p)).sum())
    assert torch.isfinite(out.total)
    assert out.consistency.item() == pytest.approx(consistency, rel=1e-6)
    assert out.total.item() == pytest.approx(consistency - entropy, rel=1e-6)
    assert LOG_FLOOR == -100.0


def test_scan_loss_all_orthogonal_batch_is_exactly_the_floor():
    anchor = torch.tensor([[0.0, -1000.0]])
    neighbor = torch.tensor([[-1000.0, 0.0]])
    out = scan_loss(anchor, neighbor, entropy_weight=0.0)
    assert out.consistency.item() == pytest.approx(100.0)
    assert out.total.item() == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------
# Validation SCAN loss


def _validation_brute_force(p: np.ndarray, neighbors: np.ndarray, weight: float) -> tuple[float, float]:
    sim = p @ p.T  # N×N, fine for a test
    logs = []
    for n in range(len(p)):
        logs.append(max(np.log(sim[n, n]), LOG_FLOOR))
        for j in neighbors[n]:
            logs.append(max(np.log(sim[n, j]), LOG_FLOOR))
    consistency = -float(np.mean(logs))
    return consistency - weight * _entropy_of_mean(p), consistency


@pytest.fixture
def random_probs_and_neighbors():
    rng = np.random.default_rng(1)
    n, k_clusters, k = 23, 4, 3
    probs = _softmax(rng.normal(size=(n, k_clusters)) * 2)
    neighbors = np.stack([rng.choice(np.delete(np.arange(n), i), size=k, replace=False) for i in range(n)])
    return probs, neighbors


@pytest.mark.parametrize("chunk", [8192, 23, 5, 1])
def test_validation_scan_loss_equals_brute_force_for_any_chunk(random_probs_and_neighbors, chunk):
    probs, neighbors = random_probs_and_neighbors
    expected_total, expected_consistency = _validation_brute_force(probs, neighbors, weight=0.7)
    out = validation_scan_loss(torch.tensor(probs, dtype=torch.float32), torch.tensor(neighbors), 0.7, chunk=chunk)
    assert out.consistency.item() == pytest.approx(expected_consistency, rel=1e-5)
    assert out.entropy.item() == pytest.approx(_entropy_of_mean(probs), rel=1e-5)
    assert out.total.item() == pytest.approx(expected_total, rel=1e-5)


def test_validation_scan_loss_floors_orthogonal_pairs():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    neighbors = torch.tensor([[1], [0], [0]])
    out = validation_scan_loss(probs, neighbors, entropy_weight=0.0, chunk=2)
    # pairs: (0,0)=1, (0,1)=0, (1,1)=1, (1,0)=0, (2,2)=1, (2,0)=1 -> −log: 0, 100, 0, 100, 0, 0
    assert out.consistency.item() == pytest.approx(200 / 6)


# ---------------------------------------------------------------------------------------------
# Confidence cross-entropy


def test_confidence_ce_without_confident_samples_returns_none():
    out = confidence_ce(torch.zeros(4, 3), torch.randn(4, 3), threshold=0.99, class_balance=True)
    assert out.loss is None
    assert out.confident == 0


def test_confidence_ce_threshold_is_strict():
    # K = 2 with equal logits: max softmax is exactly 0.5
    weak = torch.zeros(3, 2)
    strong = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    assert confidence_ce(weak, strong, threshold=0.5, class_balance=False) == (None, 0)
    out = confidence_ce(weak, strong, threshold=0.49, class_balance=False)
    assert out.confident == 3
    # argmax of [0.5, 0.5] is class 0 for all three; mean CE against class 0, by hand
    ce = [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(2.0)), math.log(2)]
    assert out.loss.item() == pytest.approx(sum(ce) / 3, rel=1e-6)


def _ce_by_hand(logits: np.ndarray, target: int) -> float:
    return float(-(logits[target] - np.log(np.exp(logits).sum())))


def test_confidence_ce_class_balance_weights_n_over_n_c():
    # Weak logits: samples 0, 1, 2 confidently class 0, sample 3 confidently class 2,
    # sample 4 not confident (uniform). n = 4 confident: weights 4/3 for class 0, 4/1 for class 2.
    weak = torch.tensor([
        [10.0, 0.0, 0.0],
        [12.0, 0.0, 0.0],
        [11.0, 1.0, 0.0],
        [0.0, 0.0, 10.0],
        [0.0, 0.0, 0.0],
    ])
    strong = np.array([
        [0.5, 0.2, -0.3],
        [-1.0, 0.4, 0.1],
        [2.0, -1.0, 0.0],
        [0.3, 0.9, -0.2],
        [5.0, 5.0, 5.0],
    ])
    targets = [0, 0, 0, 2]
    ces = [_ce_by_hand(strong[i], t) for i, t in enumerate(targets)]
    w = [4 / 3, 4 / 3, 4 / 3, 4.0]
    balanced = sum(wi * ci for wi, ci in zip(w, ces)) / sum(w)
    # equivalently: the mean over present classes of each class's mean CE
    assert balanced == pytest.approx((sum(ces[:3]) / 3 + ces[3]) / 2)
    plain = sum(ces) / 4

    out = confidence_ce(weak, torch.tensor(strong, dtype=torch.float32), threshold=0.99, class_balance=True)
    assert out.confident == 4
    assert out.loss.item() == pytest.approx(balanced, rel=1e-5)

    out = confidence_ce(weak, torch.tensor(strong, dtype=torch.float32), threshold=0.99, class_balance=False)
    assert out.loss.item() == pytest.approx(plain, rel=1e-5)
    assert balanced != pytest.approx(plain, rel=1e-3)


def test_confidence_ce_does_not_backprop_into_weak_logits():
    weak = torch.tensor([[10.0, 0.0], [0.0, 10.0]], requires_grad=True)
    strong = torch.tensor([[0.1, 0.2], [0.3, 0.4]], requires_grad=True)
    out = confidence_ce(weak, strong, threshold=0.9, class_balance=True)
    out.loss.backward()
    assert weak.grad is None
    assert strong.grad is not None and strong.grad.abs().sum() > 0
