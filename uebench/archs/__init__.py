"""Victim and crafting-source architectures.

This module holds those of the paper: ResNet-18/50, VGG-11, DenseNet-121, plus a small CNN.
``airbench`` is the fast protocol's victim (airbench's network, with its data-fitted whitening
layer) and ``timm_models`` makes any timm model one (``timm:NAME``, the ``[timm]`` extra); each
registers as an ``uebench.archs`` entry point, like a third-party architecture.

Every factory takes the run-time arguments ``(num_classes, in_shape)`` (``in_shape`` is
``(C, H, W)``; inputs are float images in [0, 1]) and keyword-only user options such as
``width``.  All models end in adaptive average pooling, so they accept any input size their
docstring allows.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from uebench.errors import UebenchError

Stem = Literal["auto", "cifar", "imagenet"]
_STEMS = ("auto", "cifar", "imagenet")


def _check(in_shape: tuple[int, int, int], width: int, stem: str = "auto") -> str:
    """Validate the common options; return the stem resolved to ``"cifar"`` or ``"imagenet"``."""
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise UebenchError(f"in_shape must be (C, H, W) with positive sizes, got {in_shape}")
    if width < 1:
        raise UebenchError(f"width must be at least 1, got {width}")
    if stem not in _STEMS:
        raise UebenchError(f"stem must be one of {', '.join(_STEMS)}, got {stem!r}")
    if stem == "auto":
        return "imagenet" if in_shape[1] >= 64 else "cifar"
    return stem


def _stem(in_channels: int, width: int, kind: str) -> tuple[nn.Conv2d, nn.Module]:
    """The first conv and the pooling after it: 3×3/1 with no pool, or 7×7/2 + 3×3/2 max-pool."""
    if kind == "cifar":
        return nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False), nn.Identity()
    conv = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
    return conv, nn.MaxPool2d(3, stride=2, padding=1)


def _stem_side(side: int, kind: str) -> int:
    """Spatial size after ``_stem`` (conv 7×7/2 pad 3, then max-pool 3×3/2 pad 1)."""
    if kind == "cifar":
        return side
    return ((side - 1) // 2) // 2 + 1


# ----------------------------------------------------------------------------------------------
# ResNet, CIFAR variant (Kuang Liu's pytorch-cifar, as in the paper's code).
# torchvision's ResNet hard-codes 64 base channels and the ImageNet stem, hence our own.


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class ResNet(nn.Module):
    """ResNet with a configurable stem and base width ``width`` (stages w, 2w, 4w, 8w)."""

    def __init__(
        self,
        block: type[_BasicBlock] | type[_Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
        width: int,
        stem: str,
    ) -> None:
        super().__init__()
        conv, pool = _stem(in_channels, width, stem)
        self.stem = nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True), pool)
        layers: list[nn.Module] = []
        in_planes = width
        for i, count in enumerate(num_blocks):
            planes = width * 2**i
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.layers(self.stem(x)))
        return self.linear(torch.flatten(out, 1))


def resnet18(
    num_classes: int, in_shape: tuple[int, int, int], *, width: int = 64, stem: Stem = "auto"
) -> nn.Module:
    """ResNet-18 (BasicBlock [2, 2, 2, 2]), CIFAR variant; any input size.

    ``stem``: ``cifar`` = 3×3 stride-1 conv, no max-pool; ``imagenet`` = 7×7 stride-2 conv and
    3×3 stride-2 max-pool; ``auto`` = imagenet when H ≥ 64, else cifar.  ``width`` = channels of
    the first stage (64 in the paper: 11.17M parameters for 10 classes).
    """
    kind = _check(in_shape, width, stem)
    return ResNet(_BasicBlock, (2, 2, 2, 2), num_classes, in_shape[0], width, kind)


def resnet50(
    num_classes: int, in_shape: tuple[int, int, int], *, width: int = 64, stem: Stem = "auto"
) -> nn.Module:
    """ResNet-50 (Bottleneck ×4 expansion, [3, 4, 6, 3]), CIFAR variant; any input size.

    ``stem`` and ``width`` as for :func:`resnet18`.
    """
    kind = _check(in_shape, width, stem)
    return ResNet(_Bottleneck, (3, 4, 6, 3), num_classes, in_shape[0], width, kind)


# ----------------------------------------------------------------------------------------------


def vgg11(num_classes: int, in_shape: tuple[int, int, int], *, width: int = 64) -> nn.Module:
    """VGG-11 with BatchNorm, CIFAR style (3×3 convs, adaptive average pool, one linear layer).

    Channels ``[w, M, 2w, M, 4w, 4w, M, 8w, 8w, M, 8w, 8w, M]`` with ``w = width``; a max-pool
    (M) that would shrink a side below 1 is skipped, so any input size works (8×8 included).
    """
    _check(in_shape, width)
    cfg: list[int | str] = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]
    layers: list[nn.Module] = []
    channels, height, side_w = in_shape
    for item in cfg:
        if item == "M":
            if min(height, side_w) >= 2:
                layers.append(nn.MaxPool2d(2, 2))
                height, side_w = height // 2, side_w // 2
            continue
        out = width * int(item)
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(True)]
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


def densenet121(
    num_classes: int, in_shape: tuple[int, int, int], *, width: int = 64, stem: Stem = "auto"
) -> nn.Module:
    """DenseNet-121 (torchvision's, blocks (6, 12, 24, 16)) with a configurable stem.

    ``width`` = initial features; growth rate = ``max(1, width // 2)`` (64 → 32, the paper's
    DN-121).  ``stem`` as for :func:`resnet18`.  The three transitions halve the size, so the
    input must be at least 8×8 after the stem: 8×8 with the cifar stem, 29×29 with imagenet.
    """
    kind = _check(in_shape, width, stem)
    if min(_stem_side(side, kind) for side in in_shape[1:]) < 8:
        minimum = 8 if kind == "cifar" else 29
        raise UebenchError(
            f"densenet121 with the {kind} stem needs inputs of at least {minimum}×{minimum}, "
            f"got {in_shape[1]}×{in_shape[2]}"
        )
    # Imported here: torchvision.models pulls in torch._dynamo (a second of start-up for every
    # process, each Ray worker included) and only this architecture needs it.
    import torchvision

    model = torchvision.models.DenseNet(
        growth_rate=max(1, width // 2),
        block_config=(6, 12, 24, 16),
        num_init_features=width,
        num_classes=num_classes,
    )
    conv, pool = _stem(in_shape[0], width, kind)
    nn.init.kaiming_normal_(conv.weight)  # torchvision's own init for conv0
    model.features.conv0 = conv
    model.features.pool0 = pool
    return model


def smallcnn(num_classes: int, in_shape: tuple[int, int, int], *, width: int = 32) -> nn.Module:
    """A small fast CNN for CPU smoke runs: 3 conv-BN-ReLU layers (w, 2w, 4w), two max-pools.

    Works on any input of at least 4×4 (8×8 included).
    """
    _check(in_shape, width)
    if min(in_shape[1:]) < 4:
        size = f"{in_shape[1]}×{in_shape[2]}"
        raise UebenchError(f"smallcnn needs inputs of at least 4×4, got {size}")

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

    return nn.Sequential(
        *block(in_shape[0], width),
        *block(width, 2 * width),
        nn.MaxPool2d(2),
        *block(2 * width, 4 * width),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )
