"""Importing the original code's checkpoints (reference Appendix C) from synthetic files with
that key layout: CIFAR ResNet-18 SCAN files with and without `module.`, self-label and pretext
files, MoCo names, key and shape mismatches, `scan evaluate PRESET --model`, and refusing a
pickle that would run code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import scan
from scan.checkpoint import RunDir, load_torch, load_weights
from scan.cli import main
from scan.config import build_config, fingerprint
from scan.data.augment import weak_view
from scan.data.sources import load_source
from scan.errors import ScanError
from scan.models.backbones import build_backbone
from scan.models.heads import ClusteringModel, ContrastiveModel
from scan.zoo import read_checkpoint, to_original, to_ours

# digits images as 3-channel input of the original's CIFAR ResNet-18 (8×8 keeps it fast).
CIFAR_LIKE = ["pretext.backbone=resnet18_cifar", "data.channels=3", "data.mean=[0.3,0.3,0.3]", "data.std=[0.4,0.4,0.4]"]


def appendix_c_resnet18_keys() -> set[str]:
    """The original CIFAR ResNet-18 backbone keys, written out from the reference's Appendix C."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"backbone.conv1.weight"} | {f"backbone.bn1.{p}" for p in bn}
    for layer in range(1, 5):
        for block in (0, 1):
            prefix = f"backbone.layer{layer}.{block}"
            keys |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
            keys |= {f"{prefix}.{b}.{p}" for b in ("bn1", "bn2") for p in bn}
        if layer > 1:
            keys |= {f"backbone.layer{layer}.0.shortcut.0.weight"} | {f"backbone.layer{layer}.0.shortcut.1.{p}" for p in bn}
    return keys


def randomized(model: nn.Module) -> nn.Module:
    """Random weights and BatchNorm statistics, so a wrongly mapped key changes the outputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) * 0.5 + 0.5 if "running_var" in name else torch.randn_like(tensor) * 0.1)
    return model.eval()


def original(model: nn.Module, shortcut: bool = True, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + to_original(k, shortcut): v.clone() for k, v in model.state_dict().items()}


def test_original_cifar_layout_is_appendix_c():
    model = ContrastiveModel(build_backbone("resnet18_cifar", 3))
    keys = set(original(model))
    head = {f"contrastive_head.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert keys == appendix_c_resnet18_keys() | head and len(keys) == 124
    assert to_ours("backbone.layer3.0.shortcut.1.running_mean") == "backbone.net.layer3.0.downsample.1.running_mean"
    assert to_ours("cluster_head.4.weight") == "cluster_heads.heads.4.weight"
    # ImageNet ResNet-50: torchvision names under `backbone.` (no fc), both ways.
    resnet50 = build_backbone("resnet50", 3)
    for key in resnet50.state_dict():
        ours = f"backbone.{key}"
        assert to_ours(to_original(ours, shortcut=False)) == ours
        assert not to_original(ours, shortcut=False).startswith("backbone.net.")


@pytest.mark.parametrize("prefix", ["", "module."])
def test_cifar_scan_file_imports_as_a_run_and_predicts_like_the_original_model(tmp_path, prefix, capsys):
    reference = randomized(ClusteringModel(build_backbone("resnet18_cifar", 3), 10, 3))
    path = tmp_path / "scan_cifar-10.pth.tar"
    torch.save({"model": original(reference, prefix=prefix), "head": 1}, path)
    out = tmp_path / "run"
    assert main(["import", str(path), "--preset", "digits", "--out", str(out), *CIFAR_LIKE]) == 0
    assert "as the finished cluster stage" in capsys.readouterr().out
    run = RunDir(out)
    cfg = build_config("digits", overrides=CIFAR_LIKE)
    assert json.loads(run.done("cluster").read_text())["fingerprint"] == fingerprint(cfg, "cluster")
    card = json.loads((out / "cluster" / "model.json").read_text())
    assert (card["backbone"], card["num_heads"], card["head"], card["in_channels"]) == ("resnet18_cifar", 3, 1, 3)

    images = load_source(cfg.data).test[:40]
    with torch.no_grad():
        expected = reference(weak_view(images, cfg.data.mean, cfg.data.std))[1].softmax(-1)
    assert torch.equal(torch.from_numpy(scan.load(out, device="cpu").predict_proba(images)), expected)
    # The imported run evaluates like any other (metrics.json, matched names in the sidecar).
    assert main(["evaluate", str(out), "--device", "cpu"]) == 0
    assert "acc" in json.loads(run.metrics.read_text())["cluster"]


def test_digits_scan_file_evaluates_directly_and_as_an_imported_run_with_a_report(tmp_path, capsys):
    reference = randomized(ClusteringModel(build_backbone("small_cnn", 1), 10, 2))
    path = tmp_path / "model.pth.tar"
    torch.save({"model": original(reference, prefix="module."), "head": 0}, path)
    assert main(["evaluate", "digits", "--model", str(path), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["import", str(path), "--preset", "digits", "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--device", "cpu"]) == 0
    acc = json.loads((out / "metrics.json").read_text())["cluster"]["acc"]
    (row,) = [line for line in table.splitlines() if line.startswith("cluster ")]
    assert f"{acc:.4f}" in row  # the file evaluated directly scores as the imported run
    assert main(["report", str(out), "--per-cluster", "2", "--device", "cpu"]) == 0
    html = (out / "report" / "index.html").read_text()
    assert "cluster (imported from" in html and "no mined neighbours" in html


def test_selflabel_file_is_the_selflabel_stage(tmp_path):
    reference = randomized(ClusteringModel(build_backbone("small_cnn", 1), 10, 1))
    path = tmp_path / "selflabel.pth.tar"
    torch.save(original(reference), path)  # a plain state dict with cluster_head.0.*
    assert read_checkpoint(path).stage == "selflabel"
    assert main(["import", str(path), "--preset", "digits", "--out", str(tmp_path / "run")]) == 0
    run = RunDir(tmp_path / "run")
    assert run.done("selflabel").is_file() and not run.done("cluster").is_file()
    assert scan.load(run.root, device="cpu").card["num_heads"] == 1


def test_pretext_file_imports_as_the_pretext_stage_so_mine_and_cluster_follow(tmp_path, capsys):
    reference = randomized(ContrastiveModel(build_backbone("small_cnn", 1)))
    path = tmp_path / "simclr.pth.tar"
    # A training checkpoint: the state dict under 'model', beside other entries.
    torch.save({"model": original(reference, prefix="module."), "epoch": 500, "optimizer": {"state": {}}}, path)
    out = str(tmp_path / "run")
    short = ["cluster.epochs=1", "cluster.num_heads=1", "cluster.update_head_only=true", "device=cpu"]
    assert main(["import", path.as_posix(), "--preset", "digits", "--out", out, *short]) == 0
    backbone = load_weights(Path(out) / "pretext" / "backbone.safetensors")
    assert all(torch.equal(backbone[k], v) for k, v in reference.backbone.state_dict().items())
    assert main(["mine", "digits", "--out", out, *short]) == 0
    assert main(["cluster", "digits", "--out", out, *short]) == 0
    assert "mine: top-20 neighbours" in capsys.readouterr().out
    assert scan.load(out, device="cpu").num_clusters == 10


def test_moco_files_are_pretext_and_extra_entries_are_ignored_with_a_warning(tmp_path, capsys):
    reference = randomized(ContrastiveModel(build_backbone("small_cnn", 1)))
    state = {}
    for key, value in reference.state_dict().items():
        moco = to_original(key, shortcut=False).replace("backbone.", "encoder_q.").replace("contrastive_head.", "encoder_q.fc.")
        state[f"module.{moco}"] = value
        state[f"module.{moco.replace('encoder_q', 'encoder_k')}"] = value
    state["module.queue"] = torch.zeros(128, 16)
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.stage == "pretext"
    model = ckpt.build(build_config("digits"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.state_dict().items())

    extra = original(reference) | {"memory_bank": torch.zeros(3)}
    torch.save(extra, tmp_path / "extra.pth.tar")
    assert read_checkpoint(tmp_path / "extra.pth.tar").stage == "pretext"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ignoring 1 entries that are not model weights (memory_bank)" in err


def test_mismatched_files_are_named_in_one_line(tmp_path, capsys):
    path = tmp_path / "cifar.pth.tar"
    torch.save({"model": original(ClusteringModel(build_backbone("resnet18_cifar", 3), 10)), "head": 0}, path)
    assert main(["import", str(path), "--preset", "digits", "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit the small_cnn backbone" in err
    assert "missing 20 key(s): backbone.0.weight" in err and "unexpected 120 key(s): backbone.conv1.weight" in err
    grey = ["pretext.backbone=resnet18_cifar"]  # digits are 1-channel: conv1 has the wrong shape
    assert main(["evaluate", "digits", "--model", str(path), *grey]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wrong shape of 1 key(s): backbone.conv1.weight (64, 3, 3, 3) (expected (64, 1, 3, 3))" in err
    (tmp_path / "text.pth.tar").write_text("hello")
    assert main(["import", str(tmp_path / "text.pth.tar"), "--preset", "digits", "--out", str(tmp_path / "b")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    torch.save({"weights": [1, 2]}, tmp_path / "list.pth.tar")
    with pytest.raises(ScanError, match="not a tensor"):
        read_checkpoint(tmp_path / "list.pth.tar")


class Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(1)}, "head": Payload(marker)}, path)
    with pytest.raises(ScanError, match="refusing to load .* arbitrary Python objects"):
        load_torch(path)
    assert main(["import", str(path), "--preset", "digits", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("scan: error: refusing to load") and err.count("\n") == 1
    assert main(["evaluate", "digits", "--model", str(path)]) == 1
    assert not marker.exists() and not (tmp_path / "run").exists()
    # The payload is real: an unrestricted load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()
    os.remove(marker)
