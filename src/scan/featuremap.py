"""The report's 2-D map of the train features: PCA to two dimensions, drawn as inline SVG, one
dot per image coloured by its cluster, with the image itself shown on hover (plain SVG and CSS,
no script). Thumbnails come from one sprite PNG; each dot's hover view is a nested <svg> whose
viewBox selects its tile.

PCA, not t-SNE: scikit-learn's t-SNE took 31 s for the 1,437 digits on one core of the 2-core
machine this was written on, longer than the whole report; PCA takes milliseconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.decomposition import PCA

MAX_POINTS = 5000  # dots drawn (a seeded subsample beyond that)
MAX_THUMBS = 1000  # dots that show their image on hover
WIDTH, HEIGHT, MARGIN, THUMB = 900, 600, 12, 64
# Paul Tol's "muted" and "light" schemes: 20 colours readable on white; more clusters reuse them.
PALETTE = ("#332288", "#88ccee", "#44aa99", "#117733", "#999933", "#ddcc77", "#cc6677", "#882255", "#aa4499",
           "#dddddd", "#77aadd", "#ee8866", "#eedd88", "#ffaabb", "#99ddff", "#44bb99", "#bbcc33", "#aaaa00",
           "#000000", "#e69f00")
CSS = """
.map { width: 100%; max-width: 900px; height: auto; border: 1px solid #ccc; background: #fff; }
.map .t { display: none; }
.map .p:hover .t { display: inline; }
.map .p:hover circle { stroke: #000; stroke-width: 1.5; }
"""


def pick_points(n: int, limit: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """At most `limit` of n point indices in a seeded random order, so that the first
    MAX_THUMBS of them (those with a hover image) and the drawing order favour no part of the data."""
    return np.random.default_rng(seed).permutation(n)[:limit]


def project(features: np.ndarray) -> np.ndarray:
    """float N×D -> float N×2 in SVG coordinates (PCA, scaled into the drawing with a margin,
    y pointing down)."""
    if len(features) < 2:
        return np.full((len(features), 2), [WIDTH / 2, HEIGHT / 2])
    xy = PCA(n_components=2, random_state=0).fit_transform(features.astype(np.float64))
    low, high = xy.min(0), xy.max(0)
    span = np.where(high - low > 0, high - low, 1.0)
    unit = (xy - low) / span
    return np.stack([MARGIN + unit[:, 0] * (WIDTH - 2 * MARGIN), MARGIN + (1 - unit[:, 1]) * (HEIGHT - 2 * MARGIN)], 1)


def map_tiles(images: torch.Tensor, largest: int = 48) -> np.ndarray:
    """uint8 N×C×S×S -> uint8 N×T×T×3 hover tiles, T = min(S, largest) (shrunk with antialiasing;
    small images stay small and are enlarged by the browser, pixelated)."""
    if images.shape[-1] > largest:
        images = torch.nn.functional.interpolate(images.float(), size=(largest, largest), mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()


def save_sprite(tiles: np.ndarray, path: Path) -> int:
    """uint8 M×T×T×3 display tiles -> one PNG, tiles in a near-square grid; returns its columns."""
    m, t = len(tiles), tiles.shape[1]
    columns = max(1, math.ceil(math.sqrt(m)))
    rows = math.ceil(m / columns)
    sheet = np.full((rows * t, columns * t, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        sheet[(i // columns) * t:(i // columns + 1) * t, (i % columns) * t:(i % columns + 1) * t] = tile
    Image.fromarray(sheet).save(path, optimize=True)
    return columns


def map_svg(xy: np.ndarray, clusters: np.ndarray, titles: list[str], sprite: str | None, tile: int,
            columns: int, thumbs: int) -> str:
    """Inline SVG of the dots. xy: float M×2 (from `project`); clusters: int M; titles: one text
    per cluster for the hover title; the first `thumbs` dots show tile i of `sprite` on hover."""
    sheet_w, sheet_h = columns * tile, math.ceil(max(thumbs, 1) / columns) * tile
    parts = [f'<svg class="map" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg" role="img" '
             f'aria-label="2-D map of the train features">']
    for i, ((x, y), c) in enumerate(zip(xy, clusters)):
        dot = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{PALETTE[c % len(PALETTE)]}"/>'
        hover = ""
        if sprite is not None and i < thumbs:
            tx = x + 6 if x + 6 + THUMB <= WIDTH else x - 6 - THUMB
            ty = min(max(y - THUMB / 2, 0), HEIGHT - THUMB)
            sx, sy = (i % columns) * tile, (i // columns) * tile
            hover = (f'<svg class="t" x="{tx:.1f}" y="{ty:.1f}" width="{THUMB}" height="{THUMB}" '
                     f'viewBox="{sx} {sy} {tile} {tile}" style="image-rendering:pixelated">'
                     f'<image href="{sprite}" width="{sheet_w}" height="{sheet_h}"/></svg>')
        parts.append(f'<g class="p"><title>{titles[c]}</title>{dot}{hover}</g>')
    parts.append("</svg>")
    return "".join(parts)


def legend(titles: list[str], limit: int = 60) -> str:
    """Colour swatches with each cluster's text (the first `limit` clusters)."""
    items = [f'<span style="display:inline-block;margin-right:1em"><span style="display:inline-block;width:.8em;'
             f'height:.8em;background:{PALETTE[c % len(PALETTE)]};margin-right:.3em"></span>{text}</span>'
             for c, text in enumerate(titles[:limit])]
    more = f" … {len(titles) - limit} more (colours repeat every {len(PALETTE)} clusters)" if len(titles) > limit else ""
    return f'<p style="line-height:1.8">{"".join(items)}{more}</p>'


def feature_map_html(features: torch.Tensor, clusters: np.ndarray, thumbnails: torch.Tensor, titles: list[str],
                     folder: Path) -> str:
    """The map section's HTML. features: float M×D of the picked train images; clusters: int M;
    thumbnails: uint8 images N×C×S×S of the first N <= M of them (shown on hover); titles: per
    cluster (HTML-escaped). Writes folder/images/map-tiles.png."""
    xy = project(features.numpy())
    tiles = map_tiles(thumbnails)
    thumbs = min(len(xy), MAX_THUMBS, len(tiles))
    columns = save_sprite(tiles[:thumbs], folder / "images" / "map-tiles.png") if thumbs else 1
    svg = map_svg(xy, clusters, titles, "images/map-tiles.png" if thumbs else None, tiles.shape[1] if thumbs else 1,
                  columns, thumbs)
    return f"<style>{CSS}</style>{svg}{legend(titles)}"
