"""A `folder` run end to end on generated images: labels from sub-folders, a corrupt file
skipped and recorded, and a run without labels that reports no accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scan.cli import main

TINY = ["pretext.backbone=small_cnn_narrow", "pretext.epochs=3", "pretext.batch_size=32", "mine.k=5",
        "cluster.epochs=2", "cluster.batch_size=32", "selflabel.epochs=1", "selflabel.min_confident=0", "selflabel.max_balance_drop=1", "selflabel.max_agreement_drop=1", "selflabel.batch_size=32",
        "--size", "16", "--clusters", "3", "--device", "cpu"]


def shape_image(kind: int, rng: np.random.Generator) -> Image.Image:
    """A 20×20 RGB image: a red square, a green disc or blue stripes, at a random place."""
    img = np.full((20, 20, 3), 255, np.uint8)
    y, x = rng.integers(2, 8, size=2)
    yy, xx = np.mgrid[:20, :20]
    if kind == 0:
        img[y:y + 10, x:x + 10] = (220, 30, 30)
    elif kind == 1:
        img[(yy - y - 5) ** 2 + (xx - x - 5) ** 2 < 25] = (30, 200, 30)
    else:
        img[(xx // 3) % 2 == 0] = (30, 30, 220)
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for kind, name in enumerate(["square", "disc", "stripes"]):
        (root / name).mkdir()
        for i in range(24):
            shape_image(kind, rng).save(root / name / f"{i:02d}.png")
    (root / "square" / "broken.png").write_bytes(b"not a png at all")
    (root / "stripes" / "empty.jpg").write_bytes(b"")
    return root


def test_folder_run_with_labels_records_skipped_files(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "folder", "--data", str(shapes), "--out", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["selflabel"]) >= {"acc", "nmi", "ari"}
    assert sorted((out / "skipped.txt").read_text().split()) == ["square/broken.png", "stripes/empty.jpg"]
    assert "72 train / 72 test" in capsys.readouterr().out


def test_folder_run_without_labels_reports_no_accuracy(shapes, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "folder", "--data", str(shapes), "--out", str(out), "data.labels=none", *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "mine" not in metrics
    for step in ("cluster", "selflabel"):
        assert not {"acc", "nmi", "ari", "ami", "top5"} & set(metrics[step])
        assert 1 / 3 <= metrics[step]["confidence"] <= 1 and 0 <= metrics[step]["empty_clusters"] <= 2
