"""`--clusters auto`: estimate the number of clusters K without labels, from the cached features
and the mined neighbours.

For every K in a range, `heads` linear SCAN heads are trained on the cached features from
independent random starts (all K and all heads at once: one matrix product per step). Their
agreement with each other is the stability of K (Lange et al., "Stability-based validation of
clustering solutions", 2004):

    stability(K)  mean adjusted Rand index between the hard assignments of every pair of heads.

Too few clusters make the heads disagree on which groups to merge, too many on where to cut a
group; in between lies a plateau. Criterion: the start of the plateau, the coarsest partition the
heads reproduce (past the number of groups, heads can also agree on splitting a group by a strong
sub-structure, such as the slant of a digit, which raises stability again without being a new
group):

1. smooth the curve: each K's stability averaged with those of K - 1 and K + 1;
2. the plateau starts at the smallest K whose smoothed stability is within STABILITY_TOLERANCE
   (relative) of the best smoothed value;
3. the estimate is that K, or the K just before it when that K's own stability reaches the same
   bar.

Why smooth: with 10 heads the stability at one K is noisy. At small K a few balanced splits
compete, and the share of heads that happen to find the same one can lift a single K to the top
of the curve; the rule without smoothing answered 2 or 3 in 4 of 35 digits and MNIST estimates.
A real plateau spans several K, and the average keeps it. Why step 3: averaging also pulls the
first K after a steep rise down by a third of the rise, so a plateau that starts sharply (well
separated groups: stability near 1 at the true K) would be found one K late. Measured on this
project's digits and MNIST runs (README: "Your own photos with a pretrained backbone").
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from scan.checkpoint import RunDir, save_json
from scan.config import RunConfig
from scan.console import echo
from scan.losses import scan_loss
from scan.stages.artifacts import load_features, load_neighbors

DEFAULT_RANGE = (2, 20)
# Heads per K and their training steps. 20 heads steadied the digits curves but not MNIST's
# (README, "Your own photos"), at about twice the time on digits, so the estimate keeps 10.
HEADS, STEPS = 10, 600
# Relative distance from the best stability that still counts as the plateau (see the docstring).
STABILITY_TOLERANCE = 0.05


@dataclass
class KEstimate:
    """The chosen K and the curves it was chosen from (one value per K in `ks`)."""

    k: int
    ks: list[int]
    stability: list[float]

    @property
    def criterion(self) -> str:
        return (f"the start of the plateau of stability (mean adjusted Rand index between independently "
                f"trained SCAN heads): the smallest K whose stability averaged with K - 1 and K + 1 is within "
                f"{STABILITY_TOLERANCE:.0%} of the best such average, or the K before it if its own "
                f"stability is that high")

    def to_dict(self) -> dict:
        """The JSON form written to metrics.json under "clusters_auto"."""
        return {"k": self.k, "criterion": self.criterion, "ks": self.ks, "stability": self.stability,
                "smoothed": smooth(self.stability)}


def train_heads(features: torch.Tensor, neighbors: torch.Tensor, ks: list[int], heads: int, steps: int,
                batch_size: int, lr: float, entropy_weight: float) -> torch.nn.Linear:
    """SCAN heads for every K in `ks`, trained together on fixed features, as one linear layer.

    features: float N×D, used as given; neighbors: int64 N×k mined neighbours. Each step draws
    `batch_size` anchors and one neighbour of each, as the cluster stage does. Returns the layer
    D -> Σ_K heads·K: one block of outputs per K, in the order of `ks`, each heads×K (head-major).
    """
    x = features.float()
    n = len(x)
    sizes = [k * heads for k in ks]
    layer = torch.nn.Linear(x.shape[1], sum(sizes), device=x.device)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    # The SCAN loss of each head, for all heads of one K at once: B×heads×K -> heads.
    per_head = torch.vmap(lambda a, b: scan_loss(a, b, entropy_weight).total, in_dims=1)
    for _ in range(steps):
        anchors = torch.randint(n, (min(batch_size, n),), device=x.device)
        pairs = neighbors[anchors, torch.randint(neighbors.shape[1], (len(anchors),), device=x.device)]
        loss = sum(per_head(a, b).sum() for a, b in zip(head_logits(layer, x[anchors], ks, heads),
                                                        head_logits(layer, x[pairs], ks, heads)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return layer


def head_logits(layer: torch.nn.Linear, features: torch.Tensor, ks: list[int], heads: int) -> list[torch.Tensor]:
    """The logits of train_heads' layer on features B×D: per K, B×heads×K."""
    blocks = layer(features.float()).split([k * heads for k in ks], dim=1)
    return [block.unflatten(1, (heads, k)) for block, k in zip(blocks, ks)]


def stability(assignments: torch.Tensor) -> float:
    """Mean adjusted Rand index over all pairs of heads. assignments: heads×N int64."""
    a = assignments.numpy()
    return float(np.mean([adjusted_rand_score(a[i], a[j]) for i, j in itertools.combinations(range(len(a)), 2)]))


def smooth(curve: list[float]) -> list[float]:
    """Each value averaged with its two neighbours in the list; an end value counts twice (in
    the place of its missing neighbour)."""
    padded = np.pad(np.asarray(curve, dtype=np.float64), 1, mode="edge")
    return [float(v) for v in (padded[:-2] + padded[1:-1] + padded[2:]) / 3]


def choose_k(ks: list[int], stability_curve: list[float], tolerance: float = STABILITY_TOLERANCE) -> int:
    """The criterion (module docstring): the start of the smoothed curve's plateau, or the K
    before it when its own stability clears the plateau's bar. ks: consecutive K values, one per
    stability value."""
    smoothed = smooth(stability_curve)
    bar = (1 - tolerance) * max(smoothed)
    start = next(i for i, value in enumerate(smoothed) if value >= bar)
    return ks[start - 1] if start > 0 and stability_curve[start - 1] >= bar else ks[start]


def head_assignments(features: torch.Tensor, neighbors: torch.Tensor, k_range: tuple[int, int] = DEFAULT_RANGE,
                     heads: int = HEADS, steps: int = STEPS, batch_size: int = 256, lr: float = 3e-3,
                     entropy_weight: float = 5.0) -> tuple[list[int], list[torch.Tensor]]:
    """The K values of k_range (inclusive, at most N − 1) and, per K, the hard assignments
    heads×N (int64) of SCAN heads trained on cached features N×D and mined neighbours N×k.
    Deterministic under torch.manual_seed."""
    low, high = k_range
    if not 2 <= low <= high:
        raise ValueError(f"the K range must satisfy 2 <= low <= high, got {k_range}")
    ks = list(range(low, min(high, len(features) - 1) + 1))
    # L2-normalised, so one learning rate suits any backbone.
    x = F.normalize(features.float(), dim=1)
    layer = train_heads(x, neighbors, ks, heads, steps, batch_size, lr, entropy_weight)
    with torch.no_grad():
        return ks, [logits.argmax(2).T for logits in head_logits(layer, x, ks, heads)]


def estimate_clusters(features: torch.Tensor, neighbors: torch.Tensor, k_range: tuple[int, int] = DEFAULT_RANGE,
                      **training: int | float) -> KEstimate:
    """Estimate K in k_range (inclusive) from cached features N×D and mined neighbours N×k;
    `training` overrides head_assignments' settings. Deterministic under torch.manual_seed."""
    ks, assignments = head_assignments(features, neighbors, k_range, **training)
    curve = [stability(a) for a in assignments]
    return KEstimate(choose_k(ks, curve), ks, curve)


def estimate_path(run: RunDir) -> Path:
    """Where the estimate is kept: with mining's outputs, which it is computed from (a rerun of
    the mine stage removes it)."""
    return run.stage("mine") / "clusters_auto.json"


def read_estimate(run: RunDir) -> dict | None:
    """The estimate of a `--clusters auto` run (KEstimate.to_dict), or None."""
    path = estimate_path(run)
    return json.loads(path.read_text()) if path.is_file() else None


def estimate_run(cfg: RunConfig, run: RunDir, seed: int) -> KEstimate:
    """The estimate from a mined run's cached features and neighbours over cfg's K range, with
    the heads seeded `seed`; the caller's random streams stay as they were."""
    features, (neighbors, _) = load_features(run), load_neighbors(run)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return estimate_clusters(features, neighbors, tuple(cfg.cluster.auto_range))


def resolve_clusters(cfg: RunConfig, run: RunDir, write: bool = True) -> RunConfig:
    """`cfg` itself unless clusters is 'auto'; then a copy with the K estimated from the run's
    cached features and neighbours (computed once and written when `write`, then read back),
    seeded by the run's seed, so every process of a run finds the same K."""
    if cfg.clusters != "auto":
        return cfg
    estimate = read_estimate(run)
    if estimate is None:
        result = estimate_run(cfg, run, cfg.seed)
        estimate = result.to_dict()
        if write:
            save_json(estimate, estimate_path(run))
        curve = ", ".join(f"{k}: {a:.3f}" for k, a in zip(result.ks, result.stability))
        echo(f"clusters auto: K = {result.k}, {result.criterion} (stability by K: {curve})")
    return dataclasses.replace(cfg, clusters=int(estimate["k"]))
