"""Presets carry the original hyper-parameters; ImageNet presets import MoCo v2 weights."""

from __future__ import annotations

import pytest
import torch

from scan.config import build_config, preset_names
from scan.errors import ScanError
from scan.models.backbones import build_backbone
from scan.models.heads import ContrastiveModel
from scan.models.pretrained import load_moco_v2
from scan.pipeline import run_pipeline

PAPER_PRESETS = ["cifar10", "cifar20", "stl10", "imagenet_50", "imagenet_100", "imagenet_200", "imagenet"]


def test_every_shipped_preset_builds():
    names = preset_names()
    assert set(PAPER_PRESETS + ["digits", "mnist", "folder"]) <= set(names)
    for name in names:
        assert build_config(name).preset == name


def test_cifar_and_stl_presets_match_the_original_configs():
    c10, c20, stl = build_config("cifar10"), build_config("cifar20"), build_config("stl10")
    for c in (c10, c20, stl):
        p = c.pretext
        assert (p.epochs, p.batch_size, p.lr, p.momentum, p.weight_decay, p.temperature) == (500, 512, 0.4, 0.9, 1e-4, 0.1)
        assert (c.mine.k, c.mine.features, c.cluster.entropy_weight, c.cluster.num_heads) == (20, "projection", 5.0, 1)
        assert (c.cluster.optimizer, c.cluster.lr, c.cluster.update_head_only) == ("adam", 1e-4, False)
        assert (c.selflabel.threshold, c.selflabel.class_balance, c.selflabel.batch_size) == (0.99, True, 1000)
        assert c.data.crop_scale == [0.2, 1.0] and c.data.jitter == [0.4, 0.4, 0.4, 0.1]
    assert (c10.cluster.epochs, c10.cluster.batch_size, c10.selflabel.epochs) == (50, 128, 200)
    assert (c20.clusters, c20.cluster.epochs, c20.cluster.batch_size) == (20, 100, 512)
    assert (stl.data.size, stl.data.cutout, stl.pretext.backbone, stl.selflabel.epochs) == (96, 32, "resnet18_stl", 100)
    assert c10.data.std == [0.2023, 0.1994, 0.2010] and c20.data.mean == [0.5071, 0.4867, 0.4408]


@pytest.mark.parametrize("name,k,batch", [("imagenet_50", 50, 512), ("imagenet_100", 100, 1024), ("imagenet_200", 200, 1024)])
def test_imagenet_subset_presets_match_the_original_configs(name, k, batch):
    c = build_config(name)
    assert (c.clusters, c.pretext.backbone, c.pretext.epochs, c.mine.k, c.mine.features) == (k, "resnet50", 0, 50, "backbone")
    assert (c.cluster.update_head_only, c.cluster.num_heads, c.cluster.optimizer, c.cluster.lr, c.cluster.batch_size) == (
        True, 10, "sgd", 5.0, batch)
    assert (c.selflabel.ema, c.selflabel.class_balance, c.selflabel.lr, c.data.cutout) == (0.999, False, 0.03, 75)


def moco_checkpoint(model: ContrastiveModel) -> dict:
    """A MoCo v2-style file: query and key encoders under module., the MLP as fc.{0,2}, a queue."""
    state = {}
    for key, value in model.backbone.net.state_dict().items():
        state[f"module.encoder_q.{key}"] = value.clone()
        state[f"module.encoder_k.{key}"] = torch.zeros_like(value)
    for key, value in model.head.state_dict().items():
        state[f"module.encoder_q.fc.{key}"] = value.clone()
    state["module.queue"] = torch.zeros(128, 16)
    return {"state_dict": state, "epoch": 800, "arch": "resnet50"}


def test_moco_checkpoint_loads_into_our_model(tmp_path):
    source = ContrastiveModel(build_backbone("resnet18", 3), 128)
    torch.save(moco_checkpoint(source), tmp_path / "moco.pth.tar")
    target = ContrastiveModel(build_backbone("resnet18", 3), 128)
    load_moco_v2(tmp_path / "moco.pth.tar", target)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_moco_checkpoint_with_missing_keys_is_named(tmp_path):
    checkpoint = moco_checkpoint(ContrastiveModel(build_backbone("resnet18", 3), 128))
    del checkpoint["state_dict"]["module.encoder_q.layer4.1.bn2.weight"]
    torch.save(checkpoint, tmp_path / "moco.pth.tar")
    with pytest.raises(ScanError, match=r"missing 1 key\(s\): backbone\.net\.layer4\.1\.bn2\.weight"):
        load_moco_v2(tmp_path / "moco.pth.tar", ContrastiveModel(build_backbone("resnet18", 3), 128))


def test_a_run_with_imported_pretext_weights_trains_no_simclr(tmp_path):
    model = ContrastiveModel(build_backbone("resnet18", 1), 128)
    torch.save(moco_checkpoint(model), tmp_path / "moco.pth.tar")
    cfg = build_config("digits", overrides=[
        "pretext.backbone=resnet18", f"pretext.weights={tmp_path / 'moco.pth.tar'}", "pretext.epochs=0",
        "mine.features=backbone", "cluster.update_head_only=true", "cluster.epochs=2", "selflabel.epochs=1", "selflabel.min_confident=0", "selflabel.max_balance_drop=1", "selflabel.max_agreement_drop=1", "device=cpu"])
    metrics = run_pipeline(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run" / "pretext" / "history.jsonl").exists()
    assert "acc" in metrics["selflabel"]


def test_zero_pretext_epochs_without_weights_is_an_error(tmp_path):
    with pytest.raises(ScanError, match="pretext.weights"):
        run_pipeline(build_config("digits", overrides=["pretext.epochs=0", "device=cpu"]), out=tmp_path)
