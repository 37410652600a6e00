"""Exact cosine k-nearest neighbours with a chunked top-k: memory O(chunk·N + N·k) (the chunk
block capped at 256 MB), never N×N.
faiss (`pip install faiss-cpu`, or this package's `faiss` extra) can do the same search when asked for."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scan.errors import ScanError

BACKENDS = ("torch", "faiss")
FAISS_MISSING = ("mine.backend=faiss needs faiss, which is not installed: pip install faiss-cpu "
                 "(or this package's faiss extra), or use mine.backend=torch")


@torch.no_grad()
def knn(
    features: torch.Tensor, k: int, queries: torch.Tensor | None = None, chunk: int = 512,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine neighbours.

    features: N×d database. queries: M×d, or None to search the database against itself, in which
    case each sample is excluded from its own list by index (duplicates of it are still found).
    backend: "torch" (a chunked fp32 matrix product and a blocked top-k, on the features' device) or
    "faiss" (an exact IndexFlatIP on CPU). Returns (indices M×k int64, similarities M×k float32),
    most similar first, on the features' device.
    """
    db = F.normalize(features.float(), dim=1)
    self_search = queries is None
    q_all = db if self_search else F.normalize(queries.float(), dim=1)
    if k > db.shape[0] - int(self_search):
        raise ValueError(f"k={k} needs more than {db.shape[0]} database samples")
    if backend == "faiss":
        return _knn_faiss(db, q_all, k, self_search)
    if backend != "torch":
        raise ValueError(f"unknown knn backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    n = db.shape[0]
    # Columns are grouped in blocks of _BLOCK; the top k lie in the k blocks with the largest
    # maxima (plus the last, partial block), so top-k runs on about k·_BLOCK candidates per row
    # instead of N: the same values, though which of several equal neighbours is kept may differ.
    blocked = n > 4 * k * _BLOCK
    # At most _BLOCK_BYTES of similarities at once, whatever N (ImageNet: 1.28M columns). The
    # block is allocated once: a fresh one per chunk costs a page fault per 4 KB on CPU, which made
    # the matrix product about 30 % slower.
    chunk = max(1, min(chunk, _BLOCK_BYTES // (4 * n), q_all.shape[0]))
    buffer = db.new_empty(chunk, n)
    indices, sims = [], []
    for start in range(0, q_all.shape[0], chunk):
        q = q_all[start:start + chunk]
        sim = torch.mm(q, db.T, out=buffer[: q.shape[0]])
        if self_search:
            rows = torch.arange(q.shape[0], device=sim.device)
            sim[rows, rows + start] = float("-inf")
        values, idx = _blocked_topk(sim, k, _BLOCK) if blocked else sim.topk(k, dim=1)
        indices.append(idx)
        sims.append(values)
    return torch.cat(indices), torch.cat(sims)


# Block width of the two-level top-k (measured in benchmarks/stages.py --only mining).
_BLOCK = 64
# The largest similarity block (query chunk × N, fp32) held at once.
_BLOCK_BYTES = 256 * 2**20


def _blocked_topk(sim: torch.Tensor, k: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise top-k of sim (rows×cols, at least k whole blocks): the maximum of each whole block
    of `block` columns, the k blocks with the largest maxima, then top-k among their entries and
    the last cols % block columns."""
    rows, cols = sim.shape
    whole = cols - cols % block
    blocks = sim[:, :whole].view(rows, whole // block, block)
    best = blocks.amax(2).topk(k, dim=1).indices
    candidates = blocks.gather(1, best[:, :, None].expand(rows, k, block)).view(rows, k * block)
    if whole < cols:
        candidates = torch.cat([candidates, sim[:, whole:]], dim=1)
    values, pos = candidates.topk(k, dim=1)
    in_block = pos < k * block
    block_pos = pos.clamp_max(k * block - 1)
    columns = best.gather(1, block_pos // block) * block + block_pos % block
    return values, torch.where(in_block, columns, pos - k * block + whole)


def faiss_available() -> bool:
    """Whether `import faiss` works."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _knn_faiss(db: torch.Tensor, queries: torch.Tensor, k: int, self_search: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product search with faiss on L2-normalised rows. A self-search asks for k+1
    neighbours and drops each sample's own index (or, when a duplicate pushed it out of the
    list, the last one), so the result is the same as the torch backend's up to ties."""
    try:
        import faiss
    except ImportError:
        raise ScanError(FAISS_MISSING) from None
    device = db.device
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db.detach().cpu().contiguous().numpy())
    extra = int(self_search)
    sims, idx = index.search(queries.detach().cpu().contiguous().numpy(), k + extra)
    sims, idx = torch.from_numpy(sims), torch.from_numpy(idx).long()
    if self_search:
        own = idx == torch.arange(len(idx))[:, None]
        # Keep the first k entries that are not the sample itself.
        drop = torch.where(own.any(1), own.float().argmax(1), torch.full((len(idx),), k))
        keep = torch.arange(k + 1)[None, :] != drop[:, None]
        idx = idx[keep].view(-1, k)
        sims = sims[keep].view(-1, k)
    return idx.to(device), sims.to(device)


def neighbor_accuracy(neighbors: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of (anchor, neighbour) pairs that share the anchor's label. neighbors: N×k, labels: N."""
    return (labels[neighbors] == labels[:, None]).float().mean().item()
