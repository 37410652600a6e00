"""Backbones by name: each maps B×C×H×W images to B×D features and records D in `out_dim`."""

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
    "resnet18_cifar": lambda c: TorchvisionResNet(resnet18(), c, small_stem=True),
    "resnet18_stl": lambda c: TorchvisionResNet(resnet18(), c, small_stem=True, stem_pool=True),
    "resnet18": lambda c: TorchvisionResNet(resnet18(), c, small_stem=False),
    "resnet50": lambda c: TorchvisionResNet(resnet50(), c, small_stem=False),
}


def build_backbone(name: str, in_channels: int) -> nn.Module:
    """A freshly initialised backbone `name` for images with `in_channels` channels."""
    if name not in BACKBONES:
        raise ScanError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    return BACKBONES[name](in_channels)
