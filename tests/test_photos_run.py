"""The photos preset end to end, offline: a tiny timm model with random weights given as a local
file, features cached once, --clusters auto, heads and self-labelling on the cached features, then
`scan predict` and `scan.load` rebuilding the model from its card."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import scan
from scan.cli import main
from scan.models.backbones import build_backbone
from test_folder_run import shape_image

pytest.importorskip("timm")

BACKBONE = "timm:resnet10t"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for kind in range(3):
        for i in range(16):
            shape_image(kind, rng).save(root / f"{kind}_{i:02d}.png")  # no sub-folders: no labels
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet10t.pth"
    torch.save({"state_dict": build_backbone(BACKBONE, 3).net.state_dict()}, path)
    return path


def test_photos_run_with_auto_clusters_then_predict(tmp_path, photos, weights, capsys):
    out = tmp_path / "run"
    args = ["run", "photos", "--data", str(photos), "--out", str(out), "--clusters", "auto", "--size", "32",
            f"pretext.backbone={BACKBONE}", f"pretext.weights={weights}", "mine.k=5",
            "cluster.auto_range=[2,4]", "cluster.epochs=3", "selflabel.epochs=2", "--device", "cpu",
            # random weights give few confident images: the safeguard would skip self-labelling
            "selflabel.min_confident=0", "selflabel.max_balance_drop=1", "selflabel.max_agreement_drop=1"]
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "no training" in log and "images/s" in log and "clusters auto: K = " in log

    metrics = json.loads((out / "metrics.json").read_text())
    k = metrics["clusters_auto"]["k"]
    assert metrics["final"]["step"] == "selflabel"
    auto = metrics["clusters_auto"]
    assert auto["ks"] == [2, 3, 4] and len(auto["stability"]) == len(auto["smoothed"]) == 3
    card = json.loads((out / "selflabel" / "model.json").read_text())
    assert card["num_clusters"] == k and card["backbone"] == BACKBONE
    assert card["backbone_source"] == "pretrained" and card["backbone_weights"] == str(weights)
    # Preprocessing: --size kept, crop and statistics from timm's pretrained config.
    assert (card["input_size"], card["crop"], card["mean"]) == (32, 0.875, [0.485, 0.456, 0.406])
    # Head-only self-labelling: the backbone is the file's, untouched.
    exported = load_file(str(out / "selflabel" / "model.safetensors"))
    original = torch.load(weights, weights_only=True)["state_dict"]
    assert torch.equal(exported["backbone.net.layer1.0.conv1.weight"], original["layer1.0.conv1.weight"])
    assert np.load(out / "mine" / "features.npy").shape == (48, 512)

    # The same command again: every stage skipped, the same K.
    assert main(args) == 0
    assert "clusters auto" not in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["clusters_auto"]["k"] == k

    files = sorted(str(p) for p in photos.glob("*.png"))
    clusters = scan.load(out, device="cpu").predict(files)
    assert clusters.shape == (48,) and int(clusters.max()) < k
    assert main(["predict", str(out), *files, "--device", "cpu"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert main(["report", str(out), "--device", "cpu"]) == 0
    page = (out / "report" / "index.html").read_text()
    assert f"K = {k} was estimated (--clusters auto)" in page and "averaged with K ± 1" in page
    assert [r["path"] for r in rows] == files
    assert [int(r["cluster"]) for r in rows] == clusters.tolist()


def test_a_run_reuses_another_runs_backbone_file(tmp_path, photos, weights):
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--data", str(photos), "--size", "32", "--clusters", "3", "mine.k=5", "cluster.epochs=1",
              "selflabel.epochs=1", "--device", "cpu", f"pretext.backbone={BACKBONE}"]
    assert main(["run", "photos", "--out", str(first), f"pretext.weights={weights}", *common]) == 0
    handoff = first / "pretext" / "backbone.safetensors"
    assert main(["run", "photos", "--out", str(second), f"pretext.weights={handoff}", *common]) == 0
    assert torch.equal(torch.from_numpy(np.load(first / "mine" / "features.npy")),
                       torch.from_numpy(np.load(second / "mine" / "features.npy")))


def test_a_wrong_weight_file_stops_the_run_with_one_line(tmp_path, photos, capsys):
    save_file({"conv1.weight": torch.zeros(2, 2)}, str(tmp_path / "wrong.safetensors"))
    code = main(["run", "photos", "--data", str(photos), "--out", str(tmp_path / "r"), "--size", "32",
                 f"pretext.backbone={BACKBONE}", f"pretext.weights={tmp_path / 'wrong.safetensors'}", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert err[0].startswith("scan: error: pretext.weights") and "unexpected 1 key(s): conv1.weight" in err[0]
