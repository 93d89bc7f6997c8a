"""CIFAR-style ResNets (He et al. 2016, section 4.2), as defined in RepDistiller.

Why this family: resnet56/110/32x4 are the standard teachers and resnet20/8x4
the standard students of the CIFAR-100 distillation benchmarks (CRD,
RepDistiller), so results here compare with published tables.

Architecture: a 3x3 stem, then three stages of ``n = (depth - 2) / 6``
BasicBlocks at strides 1, 2, 2. The plain nets use widths 16-16-32-64 (stem,
stages); the ``x4`` nets use 32-64-128-256. Where a block changes shape its
shortcut is a 1x1 convolution + BN (He et al.'s option B, as in RepDistiller;
the paper's CIFAR nets used parameter-free option A, which is why resnet20 here
has ~3k more parameters than the paper's 0.27M).

Feature extraction: no in-place operations and no data-dependent control flow,
so ``torchvision.models.feature_extraction`` can trace it and hand out any node
(e.g. ``layer3.0.add``, a block's output before its final ReLU, the
"pre-activation" feature that RepDistiller's feature losses use).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from ._common import ResidualParams, drop_rates, init_weights


class ResNetParams(ResidualParams):
    """CIFAR ResNet parameters: ``dropout`` before the final linear layer, ``stochastic_depth``."""


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; ReLU after the addition."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()
        self.drop_path = StochasticDepth(drop_path, "row")  # identity in eval mode or at 0
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.drop_path(self.bn2(self.conv2(out)))
        out = out + self.shortcut(x)
        return self.relu2(out)


class CifarResNet(nn.Module):
    """``stem`` -> ``layer1..3`` -> ``pool`` (global average) -> ``dropout`` -> ``fc``."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int,
                 in_channels: int = 3, dropout: float = 0.0, stochastic_depth: float = 0.0):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        rates = iter(drop_rates(stochastic_depth, 3 * n))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        self.layer1 = self._make_layer(widths[0], widths[1], n, 1, rates)
        self.layer2 = self._make_layer(widths[1], widths[2], n, 2, rates)
        self.layer3 = self._make_layer(widths[2], widths[3], n, 2, rates)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, blocks: int, stride: int, rates) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride, next(rates))]
        layers += [BasicBlock(planes, planes, 1, next(rates)) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.flatten(self.pool(x))
        return self.fc(self.dropout(x))


_PLAIN = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def resnet20(num_classes: int, in_channels: int, dropout: float = 0.0,
             stochastic_depth: float = 0.0) -> CifarResNet:
    """CIFAR ResNet-20 (16-32-64 channels, ~0.27M parameters at 10 classes)."""
    return CifarResNet(20, _PLAIN, num_classes, in_channels, dropout, stochastic_depth)


def resnet32(num_classes: int, in_channels: int, dropout: float = 0.0,
             stochastic_depth: float = 0.0) -> CifarResNet:
    """CIFAR ResNet-32 (16-32-64 channels, ~0.47M parameters)."""
    return CifarResNet(32, _PLAIN, num_classes, in_channels, dropout, stochastic_depth)


def resnet56(num_classes: int, in_channels: int, dropout: float = 0.0,
             stochastic_depth: float = 0.0) -> CifarResNet:
    """CIFAR ResNet-56 (16-32-64 channels, ~0.86M parameters)."""
    return CifarResNet(56, _PLAIN, num_classes, in_channels, dropout, stochastic_depth)


def resnet110(num_classes: int, in_channels: int, dropout: float = 0.0,
             stochastic_depth: float = 0.0) -> CifarResNet:
    """CIFAR ResNet-110 (16-32-64 channels, ~1.73M parameters)."""
    return CifarResNet(110, _PLAIN, num_classes, in_channels, dropout, stochastic_depth)


def resnet8x4(num_classes: int, in_channels: int, dropout: float = 0.0,
             stochastic_depth: float = 0.0) -> CifarResNet:
    """CIFAR ResNet-8 at 4x width (64-128-256 channels, ~1.23M parameters)."""
    return CifarResNet(8, _X4, num_classes, in_channels, dropout, stochastic_depth)


def resnet32x4(num_classes: int, in_channels: int, dropout: float = 0.0,
             stochastic_depth: float = 0.0) -> CifarResNet:
    """CIFAR ResNet-32 at 4x width (64-128-256 channels, ~7.43M parameters)."""
    return CifarResNet(32, _X4, num_classes, in_channels, dropout, stochastic_depth)


FACTORIES = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
}
