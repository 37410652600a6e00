"""Backbones by name: each maps B×C×H×W images to B×D features and records D in `out_dim`.

A name is one of this registry's (`small_cnn`, `resnet18_cifar`, ...), `timm:NAME` (any timm
model, with timm installed) or `torchvision:NAME` (any classification model of
torchvision.models). `build_backbone` only builds the architecture with random weights and
never downloads; pretrained weights are loaded by scan.models.hub and scan.models.weights.
Every backbone keeps its network in `.net`, so weight files map onto `backbone.net` alike.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torchvision.models import resnet18, resnet50

from scan.errors import ScanError


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """A VGG-style network for tiny images (8×8 digits up to 32×32): two conv-BN-ReLU blocks per
    stage, 2×2 max-pool between stages, global average pool. Output: B×(width·2^(stages−1))."""

    def __init__(self, in_channels: int, width: int = 64, stages: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(stages):
            cout = width * 2**i
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += _conv_bn_relu(cin, cout) + _conv_bn_relu(cout, cout)
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×C×H×W float -> B×out_dim."""
        return self.net(x)


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet without its classifier. `small_stem` replaces the 7×7/2 conv and
    max-pool by a 3×3/1 conv, the CIFAR variant of the original SCAN code (32×32 stays 32×32
    into layer1); `stem_pool` adds its STL-10 variant's 2×2 max-pool. The final pool is adaptive,
    so any input size works (the original STL network's fixed 7×7 pool only took 96×96). Init is torchvision's: Kaiming normal (fan_out) convs, BN weight 1, bias 0."""

    def __init__(self, net: nn.Module, in_channels: int, small_stem: bool, stem_pool: bool = False) -> None:
        super().__init__()
        if small_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            # The original's STL-10 variant pools 96 -> 49 after the stem; the CIFAR one does not.
            net.maxpool = nn.MaxPool2d(kernel_size=2, stride=2, padding=1) if stem_pool else nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×C×H×W float -> B×out_dim (512 for ResNet-18, 2048 for ResNet-50)."""
        return self.net(x)


BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    "small_cnn": lambda c: SmallCNN(c, width=64, stages=2),
    "small_cnn_narrow": lambda c: SmallCNN(c, width=32, stages=2),
    "small_cnn_narrow_3stage": lambda c: SmallCNN(c, width=32, stages=3),
    "resnet18_cifar": lambda c: TorchvisionResNet(resnet18(), c, small_stem=True),
    "resnet18_stl": lambda c: TorchvisionResNet(resnet18(), c, small_stem=True, stem_pool=True),
    "resnet18": lambda c: TorchvisionResNet(resnet18(), c, small_stem=False),
    "resnet50": lambda c: TorchvisionResNet(resnet50(), c, small_stem=False),
}


class ClassifierFree(nn.Module):
    """A timm or torchvision classification network whose classifier is an nn.Identity, so it
    outputs the pooled features its classifier would have read. Output: B×out_dim."""

    def __init__(self, net: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.net = net
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×3×H×W float -> B×out_dim."""
        return self.net(x)


PREFIXES = ("timm:", "torchvision:")
TIMM_MISSING = "pretext.backbone {name}: timm is not installed: pip install timm (or this package's timm extra: pip install -e '.[timm]')"


def split_backbone_name(name: str) -> tuple[str, str]:
    """'timm:resnet50' -> ('timm', 'resnet50'); 'torchvision:vit_b_16' -> ('torchvision', 'vit_b_16');
    a registry name -> ('registry', name). Does not check that the model exists."""
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return prefix[:-1], name[len(prefix):]
    return "registry", name


def import_timm(name: str):
    """The timm module, or a one-line error saying how to install it (timm is an optional extra)."""
    try:
        import timm
    except ImportError:
        raise ScanError(TIMM_MISSING.format(name=name)) from None
    return timm


def check_backbone_name(name: str) -> None:
    """A one-line error unless `name` names a backbone that `build_backbone` can build."""
    kind, model = split_backbone_name(name)
    if kind == "timm":
        if not import_timm(name).is_model(model):
            raise ScanError(f"pretext.backbone {name}: timm has no model {model!r} (timm.list_models() lists them)")
    elif kind == "torchvision":
        import torchvision.models

        valid = torchvision.models.list_models(module=torchvision.models)  # classification models only
        if model not in valid:
            raise ScanError(f"pretext.backbone {name}: torchvision has no classification model {model!r}; "
                            f"valid: {', '.join(valid)}")
    elif model not in BACKBONES:
        raise ScanError(f"pretext.backbone must be one of {', '.join(BACKBONES)}, timm:NAME or torchvision:NAME; got {name!r}")


def without_last_linear(net: nn.Module) -> ClassifierFree:
    """`net` with its last nn.Linear (the classifier of every torchvision classification model:
    `fc`, `heads.head`, `classifier.N`) replaced by an identity."""
    linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ScanError(f"{type(net).__name__} has no linear classifier to remove")
    last = linears[-1]
    out_dim = net.get_submodule(last).in_features
    parent, _, child = last.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, nn.Identity())
    return ClassifierFree(net, out_dim)


def build_backbone(name: str, in_channels: int, img_size: int | None = None) -> nn.Module:
    """A freshly initialised backbone `name` for images with `in_channels` channels.

    timm and torchvision models take 3-channel images; `img_size` is passed to timm models whose
    input size is fixed (ViTs: the position embedding's grid), so they accept that size.
    """
    check_backbone_name(name)
    kind, model = split_backbone_name(name)
    if kind != "registry" and in_channels != 3:
        raise ScanError(f"pretext.backbone {name} takes RGB images: set data.channels=3 (grey images are then converted)")
    if kind == "timm":
        timm = import_timm(name)
        pretrained_cfg = timm.models.get_pretrained_cfg(model)
        fixed = pretrained_cfg is not None and pretrained_cfg.fixed_input_size
        kwargs = {"img_size": img_size} if fixed and img_size is not None else {}
        net = timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
        return ClassifierFree(net, net.num_features)
    if kind == "torchvision":
        from torchvision.models import get_model

        return without_last_linear(get_model(model, weights=None))
    return BACKBONES[model](in_channels)
