"""Pretrained backbones without a download: tiny timm and torchvision models with random weights,
saved in every supported file layout, loaded back through the key remapping; the one-line errors
for files that do not fit; the offline messages; hub caches used without the network; and the
preprocessing taken from the model's pretrained config."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from scan.config import build_config
from scan.errors import ScanError
from scan.models import hub
from scan.models.backbones import build_backbone
from scan.models.weights import load_backbone_weights

pytest.importorskip("timm")

TIMM = "timm:resnet10t"


def randomized(backbone: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`backbone` with every parameter and BN statistic drawn at random (so a load is visible)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in backbone.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen).abs() * 0.1 + 0.01)
    return backbone.eval()


@pytest.fixture(scope="module")
def source():
    """A timm ResNet-10t with random weights: the network whose files are written below."""
    return randomized(build_backbone(TIMM, 3), 0)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def layouts(net_state: dict[str, torch.Tensor]) -> dict[str, object]:
    """The same weights as each supported writer stores them (classifier included where it has one)."""
    classifier = {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    dino_head = {"head.mlp.0.weight": torch.randn(8, 512), "head.last_layer.weight_g": torch.randn(8, 1)}
    return {
        "timm.safetensors": {**net_state, **classifier},
        "timm.pth": {**net_state, **classifier},
        "wrapped.pth.tar": {"state_dict": {f"module.{k}": v for k, v in net_state.items()}, "epoch": 3},
        "model.pth": {"model": net_state},
        "dino.pth": {"teacher": {**{f"backbone.{k}": v for k, v in net_state.items()}, **dino_head},
                     "student": {f"module.backbone.{k}": -v for k, v in net_state.items()}},
        "moco.pth.tar": {"state_dict": {**{f"module.encoder_q.{k}": v for k, v in net_state.items()},
                                        "module.encoder_q.fc.0.weight": torch.randn(4, 4),
                                        "module.encoder_k.conv1.0.weight": torch.randn(1)}},
        "backbone.safetensors": {f"net.{k}": v for k, v in net_state.items()},  # this project's hand-off
    }


@pytest.mark.parametrize("name", list(layouts({})))
def test_every_file_layout_loads_into_the_backbone(tmp_path, source, name):
    state = source.net.state_dict()
    path = tmp_path / name
    content = layouts(state)[name]
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in content.items()}, str(path))
    else:
        torch.save(content, path)
    target = build_backbone(TIMM, 3)
    assert not same_weights(target, source)
    load_backbone_weights(target, path, TIMM)
    assert same_weights(target, source)  # DINO: the teacher, not the (negated) student
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(target.eval()(x), source(x))


def test_torchvision_files_load_with_their_classifier_dropped(tmp_path):
    source = randomized(build_backbone("torchvision:mobilenet_v3_small", 3), 1)
    full = {**source.net.state_dict(), "classifier.3.weight": torch.randn(1000, 1024), "classifier.3.bias": torch.randn(1000)}
    torch.save(full, tmp_path / "mobilenet.pth")
    target = build_backbone("torchvision:mobilenet_v3_small", 3)
    load_backbone_weights(target, tmp_path / "mobilenet.pth", "torchvision:mobilenet_v3_small")
    assert same_weights(target, source)
    assert target(torch.rand(2, 3, 32, 32)).shape == (2, 1024)


def test_registry_backbone_takes_a_torchvision_resnet_file(tmp_path):
    from torchvision.models import resnet18

    net = resnet18()
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    target = build_backbone("resnet18", 3)
    load_backbone_weights(target, tmp_path / "resnet18.pth", "resnet18")
    assert torch.equal(target.net.layer1[0].conv1.weight, net.layer1[0].conv1.weight)


def test_a_vit_file_is_adapted_to_another_input_size_by_timm(tmp_path):
    source = build_backbone("timm:vit_tiny_patch16_224", 3)  # 14×14 position grid
    save_file({k: v.contiguous() for k, v in source.net.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    target = build_backbone("timm:vit_tiny_patch16_224", 3, img_size=32)  # 2×2 grid
    load_backbone_weights(target, tmp_path / "vit.safetensors", "timm:vit_tiny_patch16_224")
    assert torch.equal(target.net.blocks[0].attn.qkv.weight, source.net.blocks[0].attn.qkv.weight)
    assert target(torch.rand(1, 3, 32, 32)).shape == (1, 192)


def test_files_that_do_not_fit_are_one_line_errors_naming_the_keys(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ScanError) as err:
        load_backbone_weights(build_backbone(TIMM, 3), tmp_path / "resnet18.pth", TIMM)
    message = str(err.value)
    assert "\n" not in message and "does not fit pretext.backbone timm:resnet10t" in message
    assert "missing" in message and "conv1.0.weight" in message  # resnet10t's deep stem
    assert "unexpected" in message and "conv1.weight" in message
    assert "mis-shaped" in message and "(+" in message  # long lists are cut with a count

    shapes = build_backbone(TIMM, 3).net.state_dict()
    shapes["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(shapes, tmp_path / "shape.pth")
    with pytest.raises(ScanError, match=r"mis-shaped 1 key\(s\): layer1.0.conv1.weight \(1, 1, 1, 1\) vs"):
        load_backbone_weights(build_backbone(TIMM, 3), tmp_path / "shape.pth", TIMM)


def test_unreadable_files_are_one_line_errors(tmp_path):
    backbone = build_backbone(TIMM, 3)
    with pytest.raises(ScanError, match="no such file"):
        load_backbone_weights(backbone, tmp_path / "none.pth", TIMM)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ScanError, match="not a readable safetensors file"):
        load_backbone_weights(backbone, tmp_path / "junk.safetensors", TIMM)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ScanError, match="not a readable PyTorch file"):
        load_backbone_weights(backbone, tmp_path / "junk.pth", TIMM)
    torch.save({"epoch": 3}, tmp_path / "nostate.pth")
    with pytest.raises(ScanError, match="no state dict of tensors"):
        load_backbone_weights(backbone, tmp_path / "nostate.pth", TIMM)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_with_arbitrary_objects_is_refused(tmp_path):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": Payload()}, f, protocol=2)  # GLOBAL opcodes, as torch.save writes
    with pytest.raises(ScanError, match="refusing to load"):
        load_backbone_weights(build_backbone(TIMM, 3), tmp_path / "evil.pth", TIMM)


def test_backbone_names_are_checked_with_one_line_errors():
    with pytest.raises(ScanError, match="timm has no model 'no_such_net'"):
        build_backbone("timm:no_such_net", 3)
    with pytest.raises(ScanError, match="torchvision has no classification model 'no_such_net'; valid: alexnet"):
        build_backbone("torchvision:no_such_net", 3)
    with pytest.raises(ScanError, match="timm:NAME or torchvision:NAME; got .no_such_net."):
        build_backbone("no_such_net", 3)
    with pytest.raises(ScanError, match="set data.channels=3"):
        build_backbone(TIMM, 1)


def test_offline_without_weights_names_the_file_to_put_where(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(hub, "online", lambda host: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ScanError) as err:
        hub.load_pretrained(build_backbone(TIMM, 3), TIMM, None)
    assert "\n" not in str(err.value)
    assert "https://huggingface.co/timm/resnet10t.c3_in1k/resolve/main/model.safetensors" in str(err.value)
    assert "pretext.weights=FILE" in str(err.value)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    with pytest.raises(ScanError, match=rf"put https://download.pytorch.org/models/resnet18-f37072fd.pth in "
                                        rf"{tmp_path}/torch/checkpoints/ or pass pretext.weights=FILE"):
        hub.load_pretrained(build_backbone("torchvision:resnet18", 3), "torchvision:resnet18", None)
    with pytest.raises(ScanError, match="needs pretext.weights=FILE"):
        hub.load_pretrained(build_backbone("small_cnn", 3), "small_cnn", None)


def test_weights_already_in_the_hub_caches_are_used_offline(tmp_path, monkeypatch, source):
    import huggingface_hub.constants

    monkeypatch.setattr(hub, "online", lambda host: False)
    # The Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/REVISION/FILE}.
    repo = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.net.state_dict().items()},
              str(repo / "snapshots" / "abc123" / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    target = build_backbone(TIMM, 3)
    assert hub.load_pretrained(target, TIMM, None).endswith("model.safetensors")
    assert same_weights(target, source)

    tv_source = randomized(build_backbone("torchvision:resnet18", 3), 2)
    (tmp_path / "torch" / "checkpoints").mkdir(parents=True)
    torch.save(tv_source.net.state_dict(), tmp_path / "torch" / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    tv_target = build_backbone("torchvision:resnet18", 3)
    hub.load_pretrained(tv_target, "torchvision:resnet18", None)
    assert same_weights(tv_target, tv_source)


def test_preprocessing_comes_from_the_pretrained_config_unless_set(tmp_path):
    cfg = build_config("photos", data=str(tmp_path), overrides=[f"pretext.backbone={TIMM}"])
    # timm's resnet10t.c3_in1k: trained at 176 px, crop 0.875, ImageNet statistics.
    assert (cfg.data.size, cfg.data.crop) == (176, 0.875)
    assert cfg.data.mean == [0.485, 0.456, 0.406] and cfg.data.std == [0.229, 0.224, 0.225]
    cfg = build_config("photos", data=str(tmp_path), size=64,
                       overrides=[f"pretext.backbone={TIMM}", "data.mean=[0.5,0.5,0.5]"])
    assert (cfg.data.size, cfg.data.crop, cfg.data.mean) == (64, 0.875, [0.5, 0.5, 0.5])
    cfg = build_config("photos", data=str(tmp_path), overrides=["pretext.backbone=torchvision:resnet18"])
    assert (cfg.data.size, cfg.data.crop) == (224, 224 / 256)
    cfg = build_config("photos", data=str(tmp_path))  # the preset's own DINO ViT-S/16
    assert (cfg.data.size, cfg.data.crop) == (224, 0.9)
    # Training SimCLR here: the preset's preprocessing stays.
    assert build_config("folder", data=str(tmp_path), overrides=[f"pretext.backbone={TIMM}"]).data.size == 96


def test_pretrained_needs_backbone_features(tmp_path):
    with pytest.raises(ScanError, match="set mine.features=backbone"):
        build_config("photos", data=str(tmp_path), overrides=["mine.features=projection"])
    with pytest.raises(ScanError, match="pretext.source must be one of train, pretrained"):
        build_config("photos", data=str(tmp_path), overrides=["pretext.source=imported"])
