"""`scan predict` and `scan.load`: files and folders with a corrupt file, agreement with
assignments.csv, the CSV layout, the exported sidecar, and the export -> load -> predict round trip."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import scan
from scan.checkpoint import RunDir
from scan.cli import main
from scan.config import build_config
from scan.data.augment import weak_view
from scan.data.sources import load_source
from scan.errors import ScanError
from scan.evaluate import predict_probs
from scan.models.backbones import build_backbone
from scan.models.heads import ClusteringModel
from scan.predict import load as load_model
from scan.stages.artifacts import save_clustering_model

from conftest import TINY_RUN as TINY


@pytest.fixture
def run_dir(reported_run) -> Path:
    return reported_run


@pytest.fixture(scope="module")
def digits():
    return load_source(build_config("digits").data)


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_predict_folder_skips_a_corrupt_file_and_agrees_with_assignments(run_dir, digits, tmp_path, capsys):
    folder = tmp_path / "new"
    picked = [0, 5, 17, 99, 640, 1436]
    for n, i in enumerate(picked):  # nested folders, as the train images they are
        path = folder / ("a" if n % 2 else "b/c") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.train[i, 0].numpy()).save(path)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run_dir), str(folder), "--output", str(out), "--device", "cpu", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "broken.png" in err[0] and err[0].startswith("scan: warning:")
    assert err[1] == f"predict: {len(picked)} image(s) -> {out}"
    rows = read_csv(out.read_text())
    assert len(rows) == len(picked)
    with open(run_dir / "assignments.csv", newline="") as f:
        assigned = {r["id"]: r for r in csv.DictReader(f) if r["split"] == "train"}
    for row in rows:
        i = Path(row["path"]).stem.removeprefix("img")
        assert row["cluster"] == assigned[i]["cluster"], row
        assert abs(float(row["confidence"]) - float(assigned[i]["confidence"])) < 1e-5


def test_predict_csv_to_stdout_has_top3_and_matched_names(run_dir, digits, tmp_path, capsys):
    path = tmp_path / "one.png"
    Image.fromarray(digits.test[3, 0].numpy()).resize((40, 40)).convert("RGB").save(path)  # other size and mode
    assert main(["predict", str(run_dir), str(path), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == "path,cluster,cluster_name,confidence,top1,top1_prob,top2,top2_prob,top3,top3_prob"
    (row,) = read_csv(captured.out)
    assert row["path"] == str(path) and row["top1"] == row["cluster"] and row["top1_prob"] == row["confidence"]
    probs = [float(row[f"top{i}_prob"]) for i in (1, 2, 3)]
    assert probs == sorted(probs, reverse=True)
    names = json.loads((run_dir / "selflabel" / "model.json").read_text())["cluster_names"]
    assert row["cluster_name"] == names[int(row["cluster"])]


def test_sidecar_describes_the_model_and_its_input(run_dir):
    card = json.loads((run_dir / "selflabel" / "model.json").read_text())
    assert card["backbone"] == "small_cnn" and card["in_channels"] == 1 and card["input_size"] == 8
    assert card["crop"] == 1.0 and card["mean"] == [0.3053] and card["std"] == [0.3759]
    assert (card["num_clusters"], card["num_heads"], card["head"]) == (10, 1, 0)
    assert sorted(card["cluster_names"]) == [str(d) for d in range(10)]  # K = classes: all matched
    cluster = json.loads((run_dir / "cluster" / "model.json").read_text())
    assert cluster["num_heads"] == 2 and cluster["head"] in (0, 1)


def test_export_load_predict_round_trip_is_identical(run_dir, digits, tmp_path):
    # The exported files alone, copied elsewhere, give what the run's own evaluation computes.
    export = tmp_path / "export"
    export.mkdir()
    for name in ("model.safetensors", "model.json"):
        shutil.copy(run_dir / "selflabel" / name, export / name)
    images = digits.test[:50]
    loaded = load_model(export, device="cpu").predict(images)
    expected = predict_probs(RunDir(run_dir), "selflabel", build_config("digits", overrides=TINY), images, torch.device("cpu"))
    assert torch.equal(loaded.probs, torch.from_numpy(expected))
    assert torch.equal(loaded.clusters, loaded.probs.argmax(1)) and loaded.paths is None
    assert torch.equal(load_model(run_dir, device="cpu").predict(images.numpy()[:, 0]).probs, loaded.probs)  # N×H×W
    assert np.array_equal(scan.load(run_dir, device="cpu").predict_proba(images.numpy()[:, 0]), loaded.probs.numpy())

    # A model in memory -> save -> load -> predict: the same numbers as the model itself.
    cfg = build_config("digits", overrides=TINY)
    torch.manual_seed(0)
    model = ClusteringModel(build_backbone("small_cnn", 1), 10, 3).eval()
    save_clustering_model(RunDir(tmp_path / "fresh"), "cluster", model, cfg, head=2)
    with torch.no_grad():
        direct = model(weak_view(images, cfg.data.mean, cfg.data.std))[2].softmax(-1)
    assert torch.equal(load_model(tmp_path / "fresh" / "cluster", device="cpu").predict(images).probs, direct)


def test_load_picks_the_final_step_and_refuses_what_is_not_a_model(run_dir, tmp_path):
    assert scan.load(run_dir, device="cpu").card["num_heads"] == 1  # selflabel
    partial = Path(shutil.copytree(run_dir, tmp_path / "partial", ignore=shutil.ignore_patterns("report")))
    (partial / "selflabel" / "done.json").unlink()
    assert scan.load(partial, device="cpu").card["num_heads"] == 2  # cluster
    with pytest.raises(ScanError, match="no such run directory"):
        scan.load(tmp_path / "missing")
    with pytest.raises(ScanError, match="neither a run directory"):
        scan.load(tmp_path)


def test_predict_bad_input_is_a_one_line_error(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (([str(tmp_path / "nope.png")], "no such file or folder"),
                          ([str(empty)], "no image files"),
                          ([str(empty), "--batch-size", "0"], "--batch-size must be at least 1")):
        assert main(["predict", str(run_dir), *args]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
