"""In-house ResNet trunks (no torchvision): ResNet-50 for keys, a biased ResNet-18 for values.

Parameter names follow torchvision's (`conv1`, `bn1`, `layerN.i.convJ`, `downsample.0/1`),
so ImageNet checkpoints load by name; widths and depths are configurable for small models.
Only the stem and the first three stages are built: both encoders stop at stride 16.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3×3 conv), convolutions without bias."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    """ResNet basic block; STCN's value encoder gives every convolution a bias."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, bias: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, width, 1, stride=stride, bias=bias), nn.BatchNorm2d(width)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def make_stage(block, in_channels: int, width: int, num_blocks: int, stride: int, **kwargs) -> nn.Sequential:
    """A ResNet stage: the first block changes stride/width, the rest keep them."""
    blocks = [block(in_channels, width, stride, **kwargs)]
    blocks += [block(width * block.expansion, width, 1, **kwargs) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNetStem(nn.Module):
    """7×7/2 conv, batch norm, ReLU, 3×3/2 max-pool: stride 4."""

    def __init__(self, in_channels: int, width: int, bias: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=bias)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

    def stem(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def stage_channels(block, width: int) -> tuple[int, int, int]:
    """Output channels of stages 1..3 for a base width: (f4, f8, f16)."""
    return tuple(width * (2 ** i) * block.expansion for i in range(3))


def init_resnet(module: nn.Module) -> None:
    """Kaiming init for convolutions, unit/zero batch norm, as torchvision does."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_blocks(blocks: Sequence[int]) -> tuple[int, int, int]:
    if len(blocks) != 3 or any(int(b) < 1 for b in blocks):
        raise ValueError(f"a ResNet trunk needs three stage depths >= 1, got {tuple(blocks)}")
    return tuple(int(b) for b in blocks)
