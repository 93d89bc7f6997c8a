"""Wide ResNets (Zagoruyko & Komodakis 2016), as defined in RepDistiller.

Why this family: wrn_40_2 is a standard CIFAR-100 teacher and wrn_16_2 /
wrn_40_1 its students in the distillation benchmarks; width and depth vary
independently, which makes capacity-gap experiments easy.

Architecture ``WRN-d-k``: a 3x3 stem of 16 channels, then three stages of
``n = (d - 4) / 6`` pre-activation blocks (BN-ReLU-conv3x3, BN-ReLU-dropout-
conv3x3) with 16k, 32k, 64k channels at strides 1, 2, 2, a final BN-ReLU,
global average pooling and a linear layer. A block that changes shape projects
its (pre-activated) input with a 1x1 convolution. ``dropout`` sits between the
two convolutions of each block, as in the paper; ``head_dropout`` before the
linear layer only, as in the official Meta Pseudo Labels and FixMatch/UDA
code's WRN-28-2 (no dropout inside the blocks there).

Feature extraction: no in-place operations and no data-dependent control flow
(a block's shortcut choice is fixed at construction), so it traces with
``torchvision.models.feature_extraction``.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from ._common import ResidualParams, drop_rates, init_weights


class WideResNetParams(ResidualParams):
    """Wide ResNet parameters: ``dropout`` between the two convolutions of every block, ``head_dropout``
    before the classifier."""

    head_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the final linear layer only "
                                "(the MPL/UDA recipes' placement)")


class PreActBlock(nn.Module):
    """Pre-activation block; the 1x1 projection (if any) sees the activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float, drop_path: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.drop_path = StochasticDepth(drop_path, "row")  # identity in eval mode or at 0
        self.project = stride != 1 or in_planes != planes
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if self.project else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        # Structural, not data-dependent: fixed when the block is built.
        identity = self.shortcut(act) if self.project else self.shortcut(x)
        out = self.conv1(act)
        out = self.dropout(self.relu2(self.bn2(out)))
        out = self.drop_path(self.conv2(out))
        return out + identity


class WideResNet(nn.Module):
    """``stem`` -> ``layer1..3`` -> ``norm`` -> ``relu`` -> ``pool`` -> ``flatten`` -> ``head_dropout`` -> ``fc``."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3,
                 dropout: float = 0.0, stochastic_depth: float = 0.0, head_dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"Wide ResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        rates = iter(drop_rates(stochastic_depth, 3 * n))
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.layer1 = self._make_layer(widths[0], widths[1], n, 1, dropout, rates)
        self.layer2 = self._make_layer(widths[1], widths[2], n, 2, dropout, rates)
        self.layer3 = self._make_layer(widths[2], widths[3], n, 2, dropout, rates)
        self.norm = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head_dropout = nn.Dropout(head_dropout)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, blocks: int, stride: int,
                    dropout: float, rates) -> nn.Sequential:
        layers = [PreActBlock(in_planes, planes, stride, dropout, next(rates))]
        layers += [PreActBlock(planes, planes, 1, dropout, next(rates)) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.relu(self.norm(x))
        x = self.flatten(self.pool(x))
        return self.fc(self.head_dropout(x))


def wrn_16_2(num_classes: int, in_channels: int, dropout: float = 0.0,
             stochastic_depth: float = 0.0, head_dropout: float = 0.0) -> WideResNet:
    """WRN-16-2 (32-64-128 channels, ~0.70M parameters)."""
    return WideResNet(16, 2, num_classes, in_channels, dropout, stochastic_depth, head_dropout)


def wrn_28_2(num_classes: int, in_channels: int, dropout: float = 0.0,
             stochastic_depth: float = 0.0, head_dropout: float = 0.0) -> WideResNet:
    """WRN-28-2 (32-64-128 channels, ~1.47M parameters at 10 classes)."""
    return WideResNet(28, 2, num_classes, in_channels, dropout, stochastic_depth, head_dropout)


def wrn_40_1(num_classes: int, in_channels: int, dropout: float = 0.0,
             stochastic_depth: float = 0.0, head_dropout: float = 0.0) -> WideResNet:
    """WRN-40-1 (16-32-64 channels, ~0.57M parameters)."""
    return WideResNet(40, 1, num_classes, in_channels, dropout, stochastic_depth, head_dropout)


def wrn_40_2(num_classes: int, in_channels: int, dropout: float = 0.0,
             stochastic_depth: float = 0.0, head_dropout: float = 0.0) -> WideResNet:
    """WRN-40-2 (32-64-128 channels, ~2.2M parameters)."""
    return WideResNet(40, 2, num_classes, in_channels, dropout, stochastic_depth, head_dropout)


FACTORIES = {
    "wrn_16_2": wrn_16_2,
    "wrn_28_2": wrn_28_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
}
