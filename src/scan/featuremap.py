"""The report's 2-D map of the train features: PCA to two dimensions, drawn as HTML with CSS, one
dot per image coloured by its cluster, with the image itself shown on hover (no script). The
thumbnails come from one sprite PNG; each dot's hover view shows its tile as a CSS background.

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
.map { position: relative; width: 100%; max-width: 900px; aspect-ratio: 3 / 2; border: 1px solid #ccc; background: #fff; }
.map .p { position: absolute; width: 6px; height: 6px; margin: -3px 0 0 -3px; border-radius: 50%; }
.map .p:hover { z-index: 2; outline: 1.5px solid #000; }
.map .t { display: none; position: absolute; left: 8px; top: -32px; width: 64px; height: 64px;
          border: 2px solid #fff; outline: 1px solid #888; image-rendering: pixelated; }
.map .p.l .t { left: auto; right: 8px; }
.map .p:hover .t { display: block; }
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


def map_html(xy: np.ndarray, clusters: np.ndarray, titles: list[str], sprite: str | None, columns: int,
             thumbs: int) -> str:
    """The dots as absolutely placed HTML elements (so that a hovered one, with its image, comes
    to the front). xy: float M×2 from `project`; clusters: int M; titles: one (escaped) text per
    cluster; the first `thumbs` dots show tile i of `sprite` (`columns` tiles wide) on hover."""
    rows = math.ceil(max(thumbs, 1) / columns)
    parts = ['<div class="map" role="img" aria-label="2-D map of the train features">']
    for i, ((x, y), c) in enumerate(zip(xy, clusters)):
        side = " l" if x > WIDTH - 2 * THUMB else ""
        hover = ""
        if sprite is not None and i < thumbs:
            # the sprite scaled so that one tile is THUMB px, shifted to tile i
            hover = (f'<span class="t" style="background:url({sprite}) -{(i % columns) * THUMB}px '
                     f'-{(i // columns) * THUMB}px / {columns * THUMB}px {rows * THUMB}px"></span>')
        parts.append(f'<span class="p{side}" title="{titles[c]}" style="left:{100 * x / WIDTH:.2f}%;'
                     f'top:{100 * y / HEIGHT:.2f}%;background:{PALETTE[c % len(PALETTE)]}">{hover}</span>')
    parts.append("</div>")
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
    dots = map_html(xy, clusters, titles, "images/map-tiles.png" if thumbs else None, columns, thumbs)
    return f"<style>{CSS}</style>{dots}{legend(titles)}"
