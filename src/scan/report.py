"""`scan report RUN`: an HTML report of what each cluster holds (RUN/report/index.html, its PNGs
beside it under RUN/report/images/, linked relatively so it opens from disk) and
RUN/assignments.csv, one row per image of every split.

The report shows the run's final model (self-label, else SCAN). Cluster contents (sizes,
confidence, prototypes, image grids, label composition) are those of the train split, the images
that were clustered; label-based results that the metrics also use (the matched class of each
cluster, the confusion matrix) are computed on the test split, as `scan evaluate` does. Labels
are read here and in evaluation only.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

from scan.checkpoint import STAGES, RunDir, read_json, save_text
from scan.config import RunConfig
from scan.console import echo
from scan.data.sources import ImageSplits, load_source
from scan.diagnose import (AGREEMENT_SPREAD, LOW_CONFIDENCE, SPLIT_SHARE, ClusterDoubts, best_validation_loss,
                           cluster_doubts, data_digest, load_train_neighbors, poor_solution_warning, split_warning)
from scan.errors import ScanError
from scan.featuremap import MAX_THUMBS, feature_map_html, pick_points
from scan.evaluate import TABLE_KEYS, matched_names, num_classes
from scan.kestimate import smooth
from scan.knn import neighbor_accuracy
from scan.metrics import contingency
from scan.predict import ClusterModel, load
from scan.rundir import check_data, open_existing
from scan.stages.artifacts import final_step, load_neighbors

PER_PAGE = 50  # cluster sections per HTML page: 1,000 clusters give 20 pages of ~150 small PNGs
LEAST, LEAST_COLUMNS = 8, 4  # least confident images shown per cluster, in 2 rows beside the grid
PROTOTYPE_TOPK = 10  # the prototype is chosen among a cluster's 10 most confident images (original)
ANCHORS = 8  # neighbour examples
NEIGHBORS_SHOWN = 5
MIN_TILE, MAX_TILE = 64, 128  # display size of one image in pixels (small ones upscaled, nearest)
GRID_COLUMNS = 8
TINY_SHARE, LARGE_SHARE = 0.1, 2.0  # flagged: below 10 % or above 2× the average cluster share
MAX_PER_CLUSTER = 256
SPLITS = ("train", "test")
IMPURE_SHARE = 0.8  # with labels, a cluster whose most frequent class holds less than this is flagged

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; padding: 0 1em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { image-rendering: pixelated; max-width: 100%; }
.warn { color: #a40; }
.cluster { border-top: 1px solid #ccc; padding: .3em 0 .6em; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: .85em; color: #555; }
nav a { margin-right: .6em; }
.doubt { border-left: 4px solid #c60; padding-left: .8em; }
.doubt ul { margin: .2em 0; }
"""


@dataclass
class Assigned:
    """The final model's output on one split: cluster int64 N and its probability float32 N."""

    clusters: np.ndarray
    confidence: np.ndarray


# ---------------------------------------------------------------------------------------------
# Analysis (pure functions over arrays)


def cluster_members(clusters: np.ndarray, confidence: np.ndarray, num_clusters: int) -> list[np.ndarray]:
    """For each cluster, the indices of its images, most confident first."""
    order = np.lexsort((-confidence, clusters))  # by cluster, then by falling confidence
    bounds = np.cumsum(np.bincount(clusters, minlength=num_clusters))
    return np.split(order, bounds[:-1])


def prototypes(features: torch.Tensor, groups: list[np.ndarray]) -> list[int | None]:
    """The original's prototype rule. features: float M×D backbone features of the images in the
    concatenated `groups` (each a cluster's up-to-10 most confident image indices, in order).
    Returns per group the index whose feature is closest (L2) to the group's mean; None if empty."""
    result: list[int | None] = []
    start = 0
    for group in groups:
        f = features[start:start + len(group)]
        start += len(group)
        result.append(int(group[(f - f.mean(0)).norm(dim=1).argmin()]) if len(group) else None)
    return result


def confusion_matrix(target: np.ndarray, pred: np.ndarray, num_classes: int, num_clusters: int) -> np.ndarray:
    """Row-normalised confusion: cell [t, c] is the share of class t's images that went to
    cluster c, so every row with images sums to 1 (rows of absent classes are 0). Each row is
    divided by its own class count — the original divided column j by class j's count."""
    counts = contingency(pred, target, num_clusters, num_classes).T.astype(np.float64)
    totals = counts.sum(1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def column_order(mapping: list[str | None], classes: list[str]) -> np.ndarray:
    """Clusters ordered by the class they were matched to (so matches lie on the diagonal),
    unmatched clusters last."""
    rank = {name: i for i, name in enumerate(classes)}
    return np.array(sorted(range(len(mapping)), key=lambda c: (rank.get(mapping[c], len(classes)), c)))


def size_warnings(sizes: np.ndarray) -> list[str]:
    """One line per kind of problem: empty clusters, tiny ones (< 10 % of the average share) and
    large ones (> 2× the average share)."""
    n, k = int(sizes.sum()), len(sizes)
    average = n / k
    lines = []
    empty = np.flatnonzero(sizes == 0)
    tiny = np.flatnonzero((sizes > 0) & (sizes < TINY_SHARE * average))
    large = np.flatnonzero(sizes > LARGE_SHARE * average)
    if len(empty):
        lines.append(f"{len(empty)} empty cluster(s): {_id_list(empty)}")
    if len(tiny):
        lines.append(f"{len(tiny)} tiny cluster(s), under {TINY_SHARE:.0%} of the average size "
                     f"({average:.1f} images): {_id_list(tiny, sizes)}")
    if len(large):
        lines.append(f"{len(large)} cluster(s) with more than {LARGE_SHARE:g}× the average share "
                     f"({100 / k:.1f} %): {_id_list(large, sizes, n)}")
    return lines


def _id_list(ids: np.ndarray, sizes: np.ndarray | None = None, total: int | None = None, limit: int = 40) -> str:
    """'3 (4 images), 7 (2 images), ...' — at most `limit` entries."""
    parts = []
    for c in ids[:limit]:
        if sizes is None:
            parts.append(str(c))
        elif total is None:
            parts.append(f"{c} ({sizes[c]} images)")
        else:
            parts.append(f"{c} ({100 * sizes[c] / total:.1f} %)")
    return ", ".join(parts) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def composition(labels: np.ndarray, classes: list[str], top: int = 3) -> str:
    """'7 95 %, 1 3 %, 9 2 %': the most frequent classes among `labels` with their shares
    (those of at least 0.5 %, so that no class is listed at 0 %)."""
    shares = 100 * np.bincount(labels, minlength=len(classes)) / len(labels)
    order = np.argsort(-shares, kind="stable")[:top]
    return ", ".join(f"{classes[c]} {shares[c]:.0f} %" for c in order if shares[c] >= 0.5)


def impurity(labels: np.ndarray, classes: list[str], threshold: float = IMPURE_SHARE) -> str | None:
    """'impure: its most frequent class, 1, holds 59 % (< 80 %)' when the majority class of a
    cluster's labels holds less than `threshold` of them, else None."""
    counts = np.bincount(labels, minlength=len(classes))
    top = int(counts.argmax())
    share = counts[top] / counts.sum()
    if share >= threshold:
        return None
    return f"impure: its most frequent class, {classes[top]}, holds {share:.0%} (< {threshold:.0%})"


# ---------------------------------------------------------------------------------------------
# Pictures


def display_tiles(images: torch.Tensor) -> np.ndarray:
    """uint8 N×C×S×S -> uint8 N×T×T×3 for display: small images are upscaled by a whole factor
    with nearest neighbour (8×8 digits stay crisp at 64×64), large ones shrunk to MAX_TILE."""
    size = images.shape[-1]
    if size < MIN_TILE:
        factor = math.ceil(MIN_TILE / size)
        images = images.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
    elif size > MAX_TILE:
        images = F.interpolate(images.float(), size=(MAX_TILE, MAX_TILE), mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()


def save_montage(images: torch.Tensor, path: Path, columns: int,
                 borders: list[tuple[int, int, int]] | None = None) -> None:
    """A grid of uint8 N×C×S×S images as one PNG, `columns` wide, each tile framed in white or
    in its colour from `borders`."""
    tiles = display_tiles(images)
    n, t = len(tiles), tiles.shape[1]
    pad = 3
    cell = t + 2 * pad
    rows, cols = math.ceil(n / columns), min(n, columns)
    canvas = np.full((rows * cell, cols * cell, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        y, x = (i // columns) * cell, (i % columns) * cell
        if borders is not None:
            canvas[y + 1:y + cell - 1, x + 1:x + cell - 1] = borders[i]
        canvas[y + pad:y + pad + t, x + pad:x + pad + t] = tile
    Image.fromarray(canvas).save(path, optimize=True)


def plot_sizes(sizes: np.ndarray, path: Path) -> None:
    fig = Figure(figsize=(6, 3), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.bar(np.arange(len(sizes)), sizes, width=0.8 if len(sizes) <= 100 else 1.0, color="#4477aa")
    ax.axhline(sizes.sum() / len(sizes), color="#aa3377", lw=1, ls="--", label="average")
    ax.set_xlabel("cluster")
    ax.set_ylabel("images (train)")
    if len(sizes) <= 30:
        ax.set_xticks(np.arange(len(sizes)))
    ax.legend(loc="upper right")
    fig.savefig(path)


def plot_confidence(confidence: np.ndarray, path: Path) -> None:
    fig = Figure(figsize=(4.5, 3), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.hist(confidence, bins=50, range=(0, 1), color="#4477aa")
    ax.set_xlabel("confidence (probability of the assigned cluster)")
    ax.set_ylabel("images (train)")
    fig.savefig(path)


def read_history(path: Path) -> list[dict]:
    """The records of a stage's history.jsonl; lines that are not JSON objects are skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def curve_points(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of `key` over the records that have it: a number, or a list (one value
    per head, of which the lowest is taken, as head selection does). Epochs count from 1 in
    record order when the records do not say."""
    xs, ys = [], []
    for i, r in enumerate(records):
        value = r.get(key)
        if isinstance(value, list):
            value = min((v for v in value if isinstance(v, (int, float))), default=None)
        if isinstance(value, (int, float)) and math.isfinite(value):
            epoch = r.get("epoch")
            xs.append(float(epoch) if isinstance(epoch, (int, float)) else float(i + 1))
            ys.append(float(value))
    return xs, ys


def plot_curves(histories: dict[str, list[dict]], path: Path) -> bool:
    """One panel per stage: its training loss and, where recorded, the validation loss (the
    lowest over heads). Returns False when no stage recorded a loss (nothing written)."""
    panels = [(stage, curve_points(rs, "loss"), curve_points(rs, "val_loss")) for stage, rs in histories.items()]
    panels = [p for p in panels if p[1][0] or p[2][0]]
    if not panels:
        return False
    fig = Figure(figsize=(3.2 * len(panels), 2.8), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (stage, loss, val) in zip(axes, panels):
        if loss[0]:
            ax.plot(*loss, color="#4477aa", lw=1.2, label="loss")
        if val[0]:
            twin = ax.twinx()  # the validation loss has its own scale (another entropy weight)
            twin.plot(*val, color="#cc6677", lw=1.2, label="validation loss (best head)")
            twin.tick_params(axis="y", colors="#cc6677", labelsize=7)
            ax.legend(handles=ax.get_lines() + twin.get_lines(), fontsize=7, loc="upper right")
        ax.set_title(stage, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.savefig(path)
    return True


def plot_confusion(matrix: np.ndarray, rows: list[str], columns: list[str], path: Path) -> None:
    """Heat map of a row-normalised classes×clusters matrix; names and cell values when small."""
    n_rows, n_cols = matrix.shape
    side = min(10.0, 1.5 + 0.4 * max(n_rows, n_cols))
    fig = Figure(figsize=(side, side * min(1.0, max(n_rows / n_cols, 0.3))), dpi=100, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    if max(n_rows, n_cols) <= 30:
        ax.set_yticks(np.arange(n_rows), rows, fontsize=8)
        ax.set_xticks(np.arange(n_cols), columns, fontsize=8, rotation=40, ha="right")
        for (r, c), value in np.ndenumerate(matrix):
            if value >= 0.005:
                ax.text(c, r, f"{100 * value:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.5 else "black")
    ax.set_ylabel("true class (test split)")
    ax.set_xlabel("cluster (ordered by matched class)")
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------
# HTML


def _e(value) -> str:
    return html.escape(str(value))


def _img(src: str, alt: str) -> str:
    return f'<img src="{_e(src)}" alt="{_e(alt)}" loading="lazy" />'


def _figure(src: str, caption: str) -> str:
    return f"<figure>{_img(src, caption)}<figcaption>{_e(caption)}</figcaption></figure>"


def _table(header: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """An HTML table of cells that are HTML already (escape text first); the columns in
    `numeric` are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8" /><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def page_file(page: int) -> str:
    """The HTML file of cluster page `page` (0-based): index.html holds the first."""
    return "index.html" if page == 0 else f"clusters-{page + 1}.html"


def _pager(num_clusters: int, current: int) -> str:
    pages = math.ceil(num_clusters / PER_PAGE)
    if pages == 1:
        return ""
    links = []
    for p in range(pages):
        label = f"{p * PER_PAGE}–{min(num_clusters, (p + 1) * PER_PAGE) - 1}"
        links.append(f"<b>{label}</b>" if p == current else f'<a href="{page_file(p)}#clusters">{label}</a>')
    return "<nav>clusters " + " ".join(links) + "</nav>"


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class ClusterView:
    """What one cluster section shows."""

    index: int
    size: int
    mean_confidence: float | None = None
    prototype: str | None = None  # image paths relative to the report folder
    top: str | None = None
    least: str | None = None
    shown_top: int = 0
    shown_least: int = 0
    composition: str | None = None  # label shares (train split), when labelled
    matched: str | None = None  # the class matched on the test split, when labelled
    flags: list[str] = field(default_factory=list)  # why the cluster is worth a look (doubtful, impure)

    @property
    def title(self) -> str:
        """'Cluster 3 · class 7' with labels ('no matched class' when K exceeds the classes)."""
        if self.composition is None and self.matched is None:
            return f"Cluster {self.index}"
        return f"Cluster {self.index} · " + (f"class {self.matched}" if self.matched else "no matched class")


def write_report(run_dir: str | Path, per_cluster: int = 16, device: str = "auto",
                 data: ImageSplits | None = None) -> Path:
    """Write RUN/assignments.csv and RUN/report/ (index.html, clusters-N.html, images/).

    per_cluster: how many of each cluster's most confident images to show.
    data: the run's images, when the caller has them already (else loaded from the config).
    Returns the path of index.html.
    """
    if not 1 <= per_cluster <= MAX_PER_CLUSTER:
        raise ScanError(f"--per-cluster must be between 1 and {MAX_PER_CLUSTER}, got {per_cluster}")
    run, cfg = open_existing(run_dir)
    step = final_step(run)
    model = load(run.root, device)
    data = data if data is not None else load_source(cfg.data, cfg.runtime.stream)
    check_data(run, data)
    echo(f"report: the {step} model on {len(data.train)} train and {len(data.test)} test images")
    assigned = {s: Assigned(*(t.numpy() for t in model.assign(data.images(s)))) for s in SPLITS}
    write_assignments(run.root / "assignments.csv", data, assigned)

    folder = run.root / "report"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    k = model.num_clusters
    train = assigned["train"]
    sizes = np.bincount(train.clusters, minlength=k)
    plot_sizes(sizes, folder / "images" / "sizes.png")
    plot_confidence(train.confidence, folder / "images" / "confidence.png")

    classes = _class_names(data)
    matched, confusion = None, ""
    if data.test_labels is not None:
        target = data.test_labels.numpy()
        matched = matched_names(assigned["test"].clusters, target, k, data)
        confusion = _confusion_section(folder, target, assigned["test"].clusters, classes, matched)
    views = _cluster_views(folder, model, data, train, classes, matched, per_cluster)
    doubts = cluster_doubts(train.clusters, train.confidence, k, load_train_neighbors(run, len(data.train)))
    for v in views:
        v.flags = doubts.reasons[v.index] + v.flags
    poor = poor_solution_warning(cfg, best_validation_loss(run), data_digest(run))
    sections = [_header(run, cfg, data, step, model), _metrics_section(run, data), _choices_section(run), _look_section(views, doubts, poor),
                _sizes_section(sizes), _curves_section(run, folder), _map_section(folder, model, data, train, views),
                confusion, _neighbor_section(run, folder, data), _summary_section(views)]
    pages = [views[p:p + PER_PAGE] for p in range(0, k, PER_PAGE)]
    title = f"SCAN report: {run.root.name}"
    for p, page in enumerate(pages):
        body = "".join(_cluster_section(v) for v in page)
        clusters = f'<h2 id="clusters">Clusters {page[0].index}–{page[-1].index}</h2>{_pager(k, p)}{body}{_pager(k, p)}'
        if p == 0:
            text = f"<h1>{_e(title)}</h1>" + "".join(sections) + clusters
        else:
            text = f'<h1>{_e(title)}</h1><p><a href="index.html">back to the overview</a></p>' + clusters
        (folder / page_file(p)).write_text(_page(title, text), encoding="utf-8")
    return folder / "index.html"


def write_assignments(path: Path, data: ImageSplits, assigned: dict[str, Assigned]) -> None:
    """RUN/assignments.csv: id, split, cluster, confidence[, label] for every image of every split.
    The id is the file path for folder sources, else the position in the split; the label is
    the class name when the source names its classes."""
    with_labels = any(data.labels(s) is not None for s in SPLITS)
    names = data.classes
    text = io.StringIO()  # then written atomically: a failed write leaves no partial file
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "split", "cluster", "confidence"] + (["label"] if with_labels else []))
    for split in SPLITS:
        a, labels = assigned[split], data.labels(split)
        shown = [""] * len(a.clusters) if labels is None else [names[y] if names else y for y in labels.tolist()]
        for ident, cluster, conf, label in zip(data.ids(split), a.clusters.tolist(), a.confidence, shown):
            writer.writerow([ident, split, cluster, f"{conf:.6f}"] + ([label] if with_labels else []))
    save_text(text.getvalue(), path)


def _class_names(data: ImageSplits) -> list[str] | None:
    if data.test_labels is None and data.train_labels is None:
        return None
    return data.classes or [str(c) for c in range(num_classes(data))]


def _header(run: RunDir, cfg: RunConfig, data: ImageSplits, step: str, model: ClusterModel) -> str:
    stages = []
    for stage in STAGES:
        done = run.done_record(stage)
        if done is not None:
            imported = done.get("summary", {}).get("imported")
            stages.append(f"{stage} (imported from {_e(imported)})" if imported else f"{stage} {done['seconds']:.1f} s")
    source = cfg.data.source + (f" ({cfg.data.path})" if cfg.data.path else "")
    facts = [
        ("dataset", _e(source)),
        ("images", f"{len(data.train)} train, {len(data.test)} test, {cfg.data.channels}×{cfg.data.size}×{cfg.data.size}"),
        ("clusters (K)", str(model.num_clusters)),
        ("backbone", _e(model.card["backbone"])),
        ("model shown", f"{step} (head {model.card['head']})"),
        ("stages (wall time)", ", ".join(stages)),
    ]
    return "<table>" + "".join(f"<tr><th>{a}</th><td>{b}</td></tr>" for a, b in facts) + "</table>"


def _metrics_section(run: RunDir, data: ImageSplits) -> str:
    """The test metrics from metrics.json (written by `scan evaluate`), when labels exist."""
    if data.test_labels is None:
        return "<p>The dataset has no labels, so the clusters are shown as found, without scores.</p>"
    if not run.metrics.is_file():
        return "<p>No metrics.json yet: run <code>scan evaluate</code> on this run for the test metrics.</p>"
    metrics = read_json(run.metrics)
    steps = [s for s in ("cluster", "selflabel") if metrics.get(s)]
    keys = [k for k in TABLE_KEYS if any(k in metrics[s] for s in steps)]
    if not keys:
        return ""
    rows = [[s] + [f"{metrics[s][k]:.4f}" if k in metrics[s] else "" for k in keys] for s in steps]
    return "<h2>Test metrics</h2>" + _table(["step"] + keys, rows, numeric=tuple(range(1, len(keys) + 1)))


def _choices_section(run: RunDir) -> str:
    """What the run chose without labels: the final model (and why the SCAN model stayed, when the
    self-label safeguard kept it) and, with --clusters auto, the estimated K and its curve."""
    if not run.metrics.is_file():
        return ""
    metrics = read_json(run.metrics)
    parts = []
    final = metrics.get("final")
    if final:
        why = f": {_e(final['reason'])}" if final.get("reason") else ""
        parts.append(f"<p>Final model: <b>{_e(final['step'])}</b>{why}.</p>")
    auto = metrics.get("clusters_auto")
    if auto:
        rows = [[str(k), f"{s:.3f}", f"{m:.3f}" + (" ← chosen" if k == auto["k"] else "")]
                for k, s, m in zip(auto["ks"], auto["stability"], smooth(auto["stability"]))]
        parts.append(f"<p>K = {auto['k']} was estimated (--clusters auto): {_e(auto['criterion'])}.</p>"
                     + _table(["K", "stability", "averaged with K ± 1"], rows, numeric=(0, 1, 2)))
    return "<h2>Choices made without labels</h2>" + "".join(parts) if parts else ""


def _sizes_section(sizes: np.ndarray) -> str:
    warnings = "".join(f'<li class="warn">{_e(w)}</li>' for w in size_warnings(sizes))
    return ("<h2>Cluster sizes and confidence</h2>" + (f"<ul>{warnings}</ul>" if warnings else "")
            + '<div class="row">' + _figure("images/sizes.png", "images per cluster (train split)")
            + _figure("images/confidence.png", "confidence of the assigned cluster (train split)") + "</div>")


def _confusion_section(folder: Path, target: np.ndarray, pred: np.ndarray, classes: list[str],
                       matched: list[str | None]) -> str:
    order = column_order(matched, classes)
    matrix = confusion_matrix(target, pred, len(classes), len(matched))[:, order]
    plot_confusion(matrix, classes, [f"{c}: {matched[c]}" if matched[c] else str(c) for c in order],
                   folder / "images" / "confusion.png")
    return ("<h2>Confusion matrix (test split)</h2><p>Each row is a true class and sums to 1: a cell "
            "is the share of that class's test images that went to the cluster.</p>"
            + _figure("images/confusion.png", "rows: true class; columns: cluster: matched class"))


def _neighbor_section(run: RunDir, folder: Path, data: ImageSplits) -> str:
    """A few train images (left, grey frame) with their nearest mined neighbours; with labels,
    a green frame marks a neighbour of the anchor's class and a red one another class."""
    path = run.stage("mine") / "neighbors.npy"
    if not path.is_file():
        return "<h2>Neighbours</h2><p>This run has no mined neighbours (no mine stage).</p>"
    neighbors = load_neighbors(run)[0]
    if neighbors.shape[0] != len(data.train):
        return "<h2>Neighbours</h2><p>The mined neighbours do not match the current train split; rerun mine.</p>"
    shown = min(NEIGHBORS_SHOWN, neighbors.shape[1])
    anchors = np.random.default_rng(0).choice(len(data.train), size=min(ANCHORS, len(data.train)), replace=False)
    index = torch.from_numpy(np.concatenate([[a, *neighbors[a, :shown].tolist()] for a in anchors]))
    labels = data.train_labels
    borders, text = None, ""
    if labels is not None:
        same = (labels[index].view(-1, shown + 1) == labels[index].view(-1, shown + 1)[:, :1]).flatten()
        borders = [(150, 150, 150) if i % (shown + 1) == 0 else (40, 160, 40) if s else (210, 40, 40)
                   for i, s in enumerate(same.tolist())]
        text = (f"<p>Neighbour accuracy (train split, share of neighbours with the anchor's class): "
                f"top-{neighbors.shape[1]} {neighbor_accuracy(neighbors, labels):.4f}, "
                f"top-{shown} {neighbor_accuracy(neighbors[:, :shown], labels):.4f}.</p>")
    save_montage(data.train[index], folder / "images" / "neighbors.png", shown + 1, borders)
    return ("<h2>Neighbours</h2>" + text
            + _figure("images/neighbors.png", f"each row: a train image, then its {shown} nearest mined neighbours"
                      + (" (green: same class, red: another class)" if labels is not None else "")))


def _cluster_views(folder: Path, model: ClusterModel, data: ImageSplits, train: Assigned,
                   classes: list[str] | None, matched: list[str | None] | None, per_cluster: int) -> list[ClusterView]:
    """Pictures and facts of every cluster (train split), PNGs written under images/."""
    members = cluster_members(train.clusters, train.confidence, model.num_clusters)
    tops = [m[:PROTOTYPE_TOPK] for m in members]
    picked = np.concatenate(tops)
    features = model.features(data.train[torch.from_numpy(picked)]) if len(picked) else torch.zeros(0, 1)
    protos = prototypes(features, tops)
    labels = data.train_labels.numpy() if data.train_labels is not None else None
    views = []
    for c, (m, proto) in enumerate(zip(members, protos)):
        view = ClusterView(c, len(m), matched=matched[c] if matched is not None else None,
                           composition="" if labels is not None else None)
        if len(m):
            view.mean_confidence = float(train.confidence[m].mean())
            if labels is not None:
                view.composition = composition(labels[m], classes)
                view.flags += [flag] if (flag := impurity(labels[m], classes)) else []
            top, least = m[:per_cluster], m[per_cluster:][-LEAST:][::-1]  # least confident first
            view.prototype, view.top, view.shown_top = f"images/c{c}-prototype.png", f"images/c{c}-top.png", len(top)
            save_montage(data.train[proto:proto + 1], folder / view.prototype, 1)
            save_montage(data.train[torch.from_numpy(top)], folder / view.top, GRID_COLUMNS)
            if len(least):
                view.least, view.shown_least = f"images/c{c}-least.png", len(least)
                save_montage(data.train[torch.from_numpy(least.copy())], folder / view.least, LEAST_COLUMNS)
        views.append(view)
    return views


def _cluster_section(v: ClusterView) -> str:
    share = f", mean confidence {v.mean_confidence:.3f}" if v.mean_confidence is not None else ""
    facts = "".join(f'<p class="warn">look: {_e(flag)}</p>' for flag in v.flags)
    facts += f"<p>{v.size} train images{share}"
    if v.matched is not None:
        facts += f"; matched to class <b>{_e(v.matched)}</b> (test split)"
    if v.composition:
        facts += f"; labels: {_e(v.composition)}"
    facts += "</p>"
    pictures = ""
    if v.top is not None:
        pictures = '<div class="row">' + _figure(v.prototype, "prototype") + _figure(v.top, f"{v.shown_top} most confident")
        if v.least is not None:
            pictures += _figure(v.least, f"{v.shown_least} least confident, least first")
        pictures += "</div>"
    else:
        pictures = '<p class="warn">empty: no train image was assigned to this cluster</p>'
    kind = "cluster doubt" if v.flags else "cluster"
    return f'<section class="{kind}" id="cluster-{v.index}"><h3>{_e(v.title)}</h3>{facts}{pictures}</section>\n'


def _summary_section(views: list[ClusterView]) -> str:
    """All clusters in one collapsed table with links to their sections (on any page)."""
    rows = []
    for v in views:
        link = f'<a href="{page_file(v.index // PER_PAGE)}#cluster-{v.index}">{v.index}</a>'
        conf = f"{v.mean_confidence:.3f}" if v.mean_confidence is not None else ""
        rows.append([link, str(v.size), conf] + ([_e(v.matched or "")] if any(x.matched for x in views) else [])
                    + ([_e(v.composition or "")] if any(x.composition for x in views) else [])
                    + [f'<span class="warn">{"; ".join(_e(f) for f in v.flags)}</span>'])
    header = ["cluster", "train images", "mean confidence"]
    header += ["matched class"] if any(v.matched for v in views) else []
    header += ["labels"] if any(v.composition for v in views) else []
    header += ["worth a look"]
    return (f"<details open='open'><summary>All {len(views)} clusters in a table</summary>"
            + _table(header, rows, numeric=(1, 2)) + "</details>")


def _look_section(views: list[ClusterView], doubts: ClusterDoubts, poor: str | None) -> str:
    """What the cluster numbers mean, and the clusters worth a look first, with their reasons."""
    labelled = any(v.composition is not None for v in views)
    legend = ("<p>Cluster numbers are the model's own. " + (
        "Each cluster is matched to one class (Hungarian matching on the test split); its title says "
        "which, e.g. <i>Cluster 3 · class 7</i>, and the table at the end lists both." if labelled else
        "Without labels no cluster has a class name.") + "</p>")
    flagged = [v for v in views if v.flags]
    legend += f'<p class="warn">{_e(poor)}</p>' if poor else ""
    rules = (f"Flagged from the model alone: mean confidence under {LOW_CONFIDENCE}, neighbour agreement (share of an "
             f"image's mined neighbours in its own cluster) with a standard deviation over {AGREEMENT_SPREAD}, or "
             f"two clusters that share {SPLIT_SHARE:.0%} or more of their neighbours (one class split in two)"
             + (f"; with labels, also a most frequent class under {IMPURE_SHARE:.0%} of the cluster." if labelled else "."))
    if not flagged:
        return f"<h2>Clusters worth a look</h2>{legend}<p>None. {_e(rules)}</p>"
    items = "".join(f'<li><a href="{page_file(v.index // PER_PAGE)}#cluster-{v.index}">{_e(v.title)}</a>: '
                    f'{"; ".join(_e(f) for f in v.flags)}</li>' for v in flagged[:50])
    more = f"<li>… {len(flagged) - 50} more in the table at the end</li>" if len(flagged) > 50 else ""
    split = f'<p class="warn">{_e(split_warning(doubts.pairs))}</p>' if doubts.pairs else ""
    return f"<h2>Clusters worth a look</h2>{legend}{split}<ul>{items}{more}</ul><p>{_e(rules)}</p>"


def _curves_section(run: RunDir, folder: Path) -> str:
    histories = {s: read_history(run.history(s)) for s in STAGES if run.history(s).is_file()}
    if not plot_curves(histories, folder / "images" / "curves.png"):
        return ""
    return ("<h2>Training curves</h2><p>Loss per epoch of each stage (RUN/&lt;stage&gt;/history.jsonl); for the "
            "clustering step also the label-free validation loss of the best head, which selects the model.</p>"
            + _figure("images/curves.png", "loss per epoch and stage"))


def _map_section(folder: Path, model: ClusterModel, data: ImageSplits, train: Assigned,
                 views: list[ClusterView]) -> str:
    picked = pick_points(len(train.clusters))
    index = torch.from_numpy(picked)
    features = model.features(data.train[index])
    titles = [_e(f"{v.title} ({v.size} images)") for v in views]
    svg = feature_map_html(features, train.clusters[picked], data.train[index[:MAX_THUMBS]], titles, folder)
    return (f"<h2>Map of the train features</h2><p>{len(picked)} train images placed by the first two principal "
            f"components of their backbone features, coloured by cluster; hover over a dot to see its image.</p>" + svg)
