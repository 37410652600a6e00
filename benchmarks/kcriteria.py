"""Criteria for the number of clusters K, compared on finished runs (after `scan pretext` and
`scan mine`): which K each one picks from the same cached features and mined neighbours. It records
what was tried for `--clusters auto` (results: README.md, "Your own photos"); `scan` itself uses
only the first, `scan.kestimate`'s stability.

- stability: scan.kestimate's choice (mean adjusted Rand index between independently trained SCAN
  heads; the smallest K within 5 % of the best).
- modularity: Newman's modularity of the heads' hard assignments on the directed top-k neighbour
  graph (fraction of neighbour pairs inside a cluster minus its expectation from the cluster sizes),
  mean over heads; the K of the highest.
- silhouette: scikit-learn k-means (3 starts) on the L2-normalised features, cosine silhouette on
  at most 10,000 images; the K of the highest (Rousseeuw 1987).
- eigengap: the symmetrised neighbour graph's normalised Laplacian; K eigenvalues before the
  widest gap between consecutive ones (von Luxburg 2007, section 8.3).
- merge: over-cluster, then merge: k-means with OVER_K clusters on the L2-normalised features,
  a graph of those clusters weighted by the mined neighbour links between them, and its Louvain
  communities (networkx, a dependency of torch; resolution 1; Blondel et al. 2008); K is their
  number, not bounded by the K range.

One JSON line per run: the K of each criterion, its curve, and neighbour accuracy when the run has
labels. Usage:

    python benchmarks/kcriteria.py RUN [RUN ...]
    python benchmarks/kcriteria.py --heads 20 --seed 0 RUN     # the heads' settings, another seed
"""

from __future__ import annotations

import json
import time

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import eigsh
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from scan.diagnose import neighbor_links
from scan.kestimate import HEADS, STEPS, choose_k, head_assignments, stability
from scan.rundir import read_config
from scan.stages.artifacts import load_features, load_neighbors

from kestimate import mined_runs, runs_parser  # benchmarks/kestimate.py, beside this script

OVER_K = 30  # over-clustering for "merge": 1.5x the top of the K range (2-20) tried by the others


def modularity(assignment: np.ndarray, neighbors: np.ndarray, k: int) -> float:
    """Modularity of assignment (N,) on the directed graph i -> neighbors[i] (N×k, out-degree k each)."""
    edges = neighbors.size
    inside = (assignment[:, None] == assignment[neighbors]).sum() / edges
    out_degree = np.bincount(assignment, minlength=k) * neighbors.shape[1]
    in_degree = np.bincount(assignment[neighbors].ravel(), minlength=k)
    return float(inside - (out_degree * in_degree).sum() / edges**2)


def silhouette_curve(features: np.ndarray, ks: list[int], seed: int) -> list[float]:
    """Cosine silhouette of k-means with each K on L2-normalised features N×D."""
    sample = min(len(features), 10_000)
    return [float(silhouette_score(features, KMeans(k, n_init=3, random_state=seed).fit_predict(features),
                                   metric="cosine", sample_size=sample, random_state=seed)) for k in ks]


def laplacian_eigenvalues(neighbors: np.ndarray, count: int) -> np.ndarray:
    """The `count` smallest eigenvalues of the normalised Laplacian of the symmetrised graph."""
    n, k = neighbors.shape
    graph = sp.csr_matrix((np.ones(n * k), (np.repeat(np.arange(n), k), neighbors.ravel())), shape=(n, n))
    graph = ((graph + graph.T) > 0).astype(np.float64)
    scale = sp.diags(1 / np.sqrt(np.asarray(graph.sum(1)).ravel()))
    # The largest eigenvalues of D^-1/2 W D^-1/2 are 1 minus the Laplacian's smallest.
    return np.sort(1 - eigsh(scale @ graph @ scale, k=count, which="LA", return_eigenvectors=False))


def merged_count(features: np.ndarray, neighbors: np.ndarray, seed: int) -> int:
    """Communities among OVER_K k-means clusters of features N×D (L2-normalised), linked by the
    mined neighbours N×k: the weight of clusters a-b is the number of neighbour links between them."""
    links = neighbor_links(KMeans(OVER_K, n_init=3, random_state=seed).fit_predict(features), neighbors, OVER_K)
    graph = nx.from_numpy_array(links + links.T)
    return len(nx.community.louvain_communities(graph, weight="weight", resolution=1.0, seed=seed))


def main() -> None:
    parser = runs_parser(__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=HEADS, help=f"SCAN heads per K (default: {HEADS}, scan's)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps of the heads (default: {STEPS})")
    parser.add_argument("--seed", type=int, default=None, help="seed of the heads (default: the run's seed)")
    args = parser.parse_args()
    for root, run in mined_runs(args.runs):
        cfg = read_config(run)
        start = time.perf_counter()
        features, (neighbors, _) = load_features(run), load_neighbors(run)
        heads_seed = cfg.seed if args.seed is None else args.seed
        torch.manual_seed(heads_seed)
        ks, per_k = head_assignments(features, neighbors, heads=args.heads, steps=args.steps)
        unit_features = F.normalize(features.float(), dim=1).numpy()
        curves = {
            "stability": [stability(a) for a in per_k],
            "modularity": [float(np.mean([modularity(h, neighbors.numpy(), k) for h in a.numpy()]))
                           for k, a in zip(ks, per_k)],
            "silhouette": silhouette_curve(unit_features, ks, cfg.seed),
        }
        chosen = {"stability": choose_k(ks, curves["stability"])}
        chosen |= {name: ks[int(np.argmax(curves[name]))] for name in ("modularity", "silhouette")}
        eigenvalues = laplacian_eigenvalues(neighbors.numpy(), ks[-1] + 1)
        gaps = np.diff(eigenvalues)  # gaps[i]: between the (i+1)-th and (i+2)-th smallest
        chosen["eigengap"] = ks[int(np.argmax(gaps[ks[0] - 1:ks[-1]]))]
        chosen["merge"] = merged_count(unit_features, neighbors.numpy(), cfg.seed)
        mined = json.loads(run.done("mine").read_text())["summary"]
        print(json.dumps({"benchmark": "kcriteria", "run": str(root), "preset": cfg.preset, "seed": cfg.seed,
                          "heads": args.heads, "steps": args.steps, "heads_seed": heads_seed,
                          "neighbor_accuracy": mined.get("neighbor_accuracy"), "k": chosen, "ks": ks,
                          **{name: [round(v, 4) for v in curve] for name, curve in curves.items()},
                          "laplacian_eigenvalues": [round(float(v), 4) for v in eigenvalues],
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
