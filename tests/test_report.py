"""`scan report`: the HTML parses, one section per cluster, every image it references exists,
assignments.csv covers every image, the confusion matrix is row-normalised on unbalanced data,
no scores without labels, and 1,000 clusters stay on light pages."""

from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

import scan
from scan.checkpoint import RunDir, save_json
from scan.cli import main
from scan.config import build_config
from scan.data.sources import ImageSplits, load_source
from scan.evaluate import predict_probs
from scan.models.backbones import build_backbone
from scan.models.heads import ClusteringModel
from scan.pipeline import commit_config
from scan.report import (PER_PAGE, Assigned, cluster_members, confusion_matrix, display_tiles, prototypes,
                         size_warnings, write_assignments, write_report)
from scan.stages.artifacts import save_clustering_model

from conftest import TINY_RUN as TINY


@pytest.fixture
def run_dir(reported_run) -> Path:
    return reported_run


def pages(report: Path) -> list[ET.Element]:
    """Every HTML page of a report, parsed strictly (the report writes well-formed XHTML)."""
    return [ET.parse(p).getroot() for p in sorted(report.glob("*.html"))]


def sections(roots: list[ET.Element]) -> list[str]:
    return [s.get("id") for root in roots for s in root.iter("section") if "cluster" in (s.get("class") or "").split()]


def text_of(report: Path) -> str:
    return " ".join("".join(root.itertext()) for root in pages(report))


def test_report_parses_with_one_section_per_cluster_and_existing_images(run_dir):
    report = run_dir / "report"
    roots = pages(report)
    assert sections(roots) == [f"cluster-{c}" for c in range(10)]
    sources = [img.get("src") for root in roots for img in root.iter("img")]
    # one prototype per non-empty cluster (how many the tiny run leaves empty varies)
    with open(run_dir / "assignments.csv", newline="") as f:
        used = {row["cluster"] for row in csv.DictReader(f) if row["split"] == "train"}
    assert sum(src.endswith("-prototype.png") for src in sources) == len(used)
    assert {"images/sizes.png", "images/confidence.png", "images/curves.png"} <= set(sources)
    for src in sources:
        assert not Path(src).is_absolute() and (report / src).is_file(), src
    text = text_of(report)
    for expected in ("digits", "small_cnn", "selflabel (head 0)", "Test metrics", "acc", "Neighbour accuracy",
                     "Confusion matrix", "prototype", "16 most confident", "matched to class"):
        assert expected in text, expected
    # The metrics table shows metrics.json's numbers.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"{metrics['selflabel']['acc']:.4f}" in text


def test_assignments_cover_every_image_and_match_the_final_model(run_dir):
    with open(run_dir / "assignments.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "split", "cluster", "confidence", "label"]
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    assert (len(train), len(test)) == (1437, 360)
    assert [r["id"] for r in test] == [str(i) for i in range(360)]
    data = load_source(build_config("digits").data)
    assert [int(r["label"]) for r in test] == data.test_labels.tolist()
    cfg = build_config("digits", overrides=TINY)
    probs = predict_probs(RunDir(run_dir), "selflabel", cfg, data.test, torch.device("cpu"))
    assert [int(r["cluster"]) for r in test] == probs.argmax(1).tolist()
    np.testing.assert_allclose([float(r["confidence"]) for r in test], probs.max(1), atol=1e-6)


def test_assignments_of_a_folder_use_file_paths_and_class_names(tmp_path):
    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    data = ImageSplits(train=images[:2], test=images[2:], train_labels=torch.tensor([1, 0]), test_labels=torch.tensor([1]),
                       classes=["cat", "dog"], train_ids=["dog/a.png", "cat/b.jpg"], test_ids=["dog/c.png"])
    assigned = {"train": Assigned(np.array([4, 2]), np.array([0.5, 0.25])), "test": Assigned(np.array([1]), np.array([1.0]))}
    write_assignments(tmp_path / "a.csv", data, assigned)
    assert (tmp_path / "a.csv").read_text().splitlines() == [
        "id,split,cluster,confidence,label", "dog/a.png,train,4,0.500000,dog", "cat/b.jpg,train,2,0.250000,cat",
        "dog/c.png,test,1,1.000000,dog"]


def test_confusion_matrix_divides_each_row_by_its_class_count():
    # Unbalanced: 90 images of class 0, 10 of class 1 (the original's column-wise division
    # would give row 0 the sums 0.9 + 8.0 and row 1 the sums 0.1 + 0.2).
    target = np.array([0] * 90 + [1] * 10)
    pred = np.array([0] * 81 + [1] * 9 + [1] * 8 + [0] * 2)
    cm = confusion_matrix(target, pred, num_classes=2, num_clusters=2)
    np.testing.assert_allclose(cm, [[0.9, 0.1], [0.2, 0.8]])
    np.testing.assert_allclose(cm.sum(1), 1.0)
    # A class without test images is a zero row, not NaN; more clusters than classes is fine.
    cm = confusion_matrix(np.array([0, 0, 2]), np.array([0, 3, 1]), num_classes=3, num_clusters=4)
    np.testing.assert_allclose(cm, [[0.5, 0, 0, 0.5], [0, 0, 0, 0], [0, 1, 0, 0]])


def test_prototype_is_the_member_closest_to_the_mean_of_the_most_confident():
    clusters = np.array([0, 0, 0, 1, 1, 0])
    confidence = np.array([0.9, 0.5, 0.8, 0.7, 0.6, 0.95])
    members = cluster_members(clusters, confidence, 3)
    assert [m.tolist() for m in members] == [[5, 0, 2, 1], [3, 4], []]
    tops = [m[:3] for m in members]  # cluster 0: images 5, 0, 2
    features = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 3.0],  # 5, 0, 2: mean (4/3, 4/3) -> image 0
                             [0.0, 1.0], [0.0, 3.0]])  # 3, 4: mean (0, 2), a tie won by the first
    assert prototypes(features, tops) == [0, 3, None]


def test_size_warnings_flag_empty_tiny_and_large_clusters():
    lines = size_warnings(np.array([0, 1, 30, 30, 30, 109]))  # average 33.3
    assert len(lines) == 3
    assert lines[0].startswith("1 empty cluster(s): 0")
    assert lines[1].startswith("1 tiny cluster(s)") and "1 (1 images)" in lines[1]
    assert "5 (54.5 %)" in lines[2]
    assert size_warnings(np.array([10, 12, 8])) == []


def test_tiny_images_are_upscaled_with_nearest_neighbour():
    images = torch.arange(2 * 64, dtype=torch.uint8).view(2, 1, 8, 8)
    tiles = display_tiles(images)
    assert tiles.shape == (2, 64, 64, 3)
    assert (tiles[:, ::8, ::8, 0] == images[:, 0].numpy()).all()
    assert (tiles[0, 8:16, 16:24] == images[0, 0, 1, 2].item()).all()


def test_report_without_labels_shows_no_scores(run_dir, tmp_path):
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    data = load_source(build_config("digits").data)
    unlabelled = ImageSplits(train=data.train, test=data.test)
    write_report(copy, per_cluster=4, device="cpu", data=unlabelled)
    text = text_of(copy / "report").lower()
    for word in ("accuracy", "acc", "nmi", "matched", "confusion", "labels:"):
        assert word not in text, word
    assert "4 most confident" in text
    with open(copy / "assignments.csv", newline="") as f:
        assert next(csv.reader(f)) == ["id", "split", "cluster", "confidence"]


def test_a_thousand_clusters_are_paginated(tmp_path):
    """An untrained 1,000-cluster model on the digits: many empty clusters, 20 pages."""
    cfg = build_config("digits", clusters=1000, device="cpu")
    run = RunDir(tmp_path)
    commit_config(run, cfg)
    torch.manual_seed(0)
    model = ClusteringModel(build_backbone("small_cnn", 1), 1000, 1)
    save_clustering_model(run, "cluster", model, cfg, head=0)
    save_json({"fingerprint": "", "seconds": 1.0, "summary": {}}, run.done("cluster"))
    write_report(tmp_path, device="cpu")
    report = tmp_path / "report"
    roots = pages(report)
    assert len(roots) == 1000 // PER_PAGE
    assert sorted(sections(roots)) == sorted(f"cluster-{c}" for c in range(1000))
    assert all(len(sections([root])) == PER_PAGE for root in roots)
    index = ET.parse(report / "index.html").getroot()
    links = {a.get("href") for a in index.iter("a")}
    assert "clusters-20.html#cluster-999" in links and "clusters-2.html#clusters" in links
    assert "empty cluster(s)" in "".join(index.itertext())
    for root in roots:
        for img in root.iter("img"):
            assert (report / img.get("src")).is_file()


def test_report_points_out_what_to_look_at_with_curves_and_a_feature_map(run_dir):
    index = ET.parse(run_dir / "report" / "index.html").getroot()
    text = "".join(index.itertext())
    # every cluster title names its matched class, and a legend says what the numbers are
    titles = [h.text for h in index.iter("h3")]
    assert len(titles) == 10 and all(t.startswith("Cluster ") and " · class " in t for t in titles)
    assert "Cluster numbers are the model's own" in text and "Clusters worth a look" in text
    # the tiny run's clusters are poor: some are flagged, in their section and in the open table
    flagged = [s for s in index.iter("section") if "doubt" in (s.get("class") or "").split()]
    assert flagged and all("look: " in "".join(s.itertext()) for s in flagged)
    details = next(index.iter("details"))
    assert details.get("open") == "open" and "worth a look" in "".join(details.itertext())
    # curves of every stage that ran, and the map: one dot per train image, hover tiles from one sprite
    assert (run_dir / "report" / "images" / "curves.png").is_file()
    dots = next(e for e in index.iter("div") if e.get("class") == "map")
    assert len([e for e in dots if "p" in e.get("class").split()]) == 1437
    hover = [e for e in dots.iter("span") if e.get("class") == "t"]
    assert len(hover) == 1000 and all("url(images/map-tiles.png)" in e.get("style") for e in hover)
    assert (run_dir / "report" / "images" / "map-tiles.png").is_file()


def test_impurity_flags_a_cluster_without_a_clear_majority():
    from scan.report import impurity

    classes = ["1", "8"]
    assert impurity(np.array([0] * 59 + [1] * 41), classes) == "impure: its most frequent class, 1, holds 59% (< 80%)"
    assert impurity(np.array([1] * 90 + [0] * 10), classes) is None


def test_curves_read_history_defensively(tmp_path):
    from scan.report import curve_points, plot_curves, read_history

    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 1, "loss": 2.0, "val_loss": [-1.0, -1.5]}\nnot json\n[1]\n'
                    '{"epoch": 2, "loss": NaN, "val_loss": [-2.0, "x"]}\n{"epoch": 3, "other": 1}\n')
    records = read_history(path)
    assert len(records) == 3
    assert curve_points(records, "loss") == ([1.0], [2.0])
    assert curve_points(records, "val_loss") == ([1.0, 2.0], [-1.5, -2.0])
    assert not plot_curves({"pretext": [{"epoch": 1}]}, tmp_path / "none.png")
    assert plot_curves({"pretext": records}, tmp_path / "c.png") and (tmp_path / "c.png").is_file()
