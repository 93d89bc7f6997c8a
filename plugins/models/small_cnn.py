"""Small convolutional nets for fast CPU experiments (MNIST, Fashion-MNIST).

Why: the CIFAR benchmarks' students and teachers take hours on a CPU. These
nets train in minutes, so a distillation or pseudo-labelling pipeline can be
checked end to end on a laptop: ``small_cnn`` (tiny by default) as the
student, ``cnn5`` (~0.14M parameters) as the stronger teacher.

Both use conv3x3 + BN + ReLU units and end with global average pooling, so
any input size and channel count works; their ``forward`` is a fixed chain of
named submodules with no in-place operations, so
``torchvision.models.feature_extraction`` can trace them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from pydantic import Field, PositiveInt
from torch import Tensor, nn

from ._common import DropoutParams, init_weights


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """A 3x3 'same' convolution (no bias: BN follows), BN and ReLU."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        bn=nn.BatchNorm2d(out_channels),
        relu=nn.ReLU(),
    ))


# --- small_cnn ----------------------------------------------------------------


class SmallCNNParams(DropoutParams):
    """``small_cnn``: one conv block per entry of ``channels``, optional hidden FC layer."""

    channels: list[PositiveInt] = Field(
        default_factory=lambda: [8, 16], min_length=1,
        description="output channels of each conv3x3-BN-ReLU-maxpool2x2 block",
    )
    hidden: int = Field(
        0, ge=0, description="width of a hidden FC layer before the output layer; 0 = none")
    pool_size: PositiveInt = Field(
        1, description="side of the adaptive average pool before the FC layers: 1 = global "
        "pooling; larger keeps spatial layout (7 on 28x28 input with two blocks = plain flatten)")


class SmallCNN(nn.Module):
    """``features`` (``block1..n``) -> ``pool`` -> ``hidden`` -> ``dropout`` -> ``fc``."""

    def __init__(self, num_classes: int, in_channels: int, channels: Sequence[int] = (8, 16),
                 hidden: int = 0, dropout: float = 0.0, pool_size: int = 1):
        super().__init__()
        blocks = OrderedDict()
        for i, width in enumerate(channels, start=1):
            block = conv_bn_relu(in_channels, width)
            # ceil_mode: a deep stack on a small image shrinks to 1x1, never to 0x0
            block.add_module("pool", nn.MaxPool2d(2, 2, ceil_mode=True))
            blocks[f"block{i}"] = block
            in_channels = width
        self.features = nn.Sequential(blocks)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.flatten = nn.Flatten(1)
        in_channels *= pool_size * pool_size
        if hidden > 0:
            self.hidden = nn.Sequential(OrderedDict(
                fc=nn.Linear(in_channels, hidden), relu=nn.ReLU(),
            ))
            in_channels = hidden
        else:
            self.hidden = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.flatten(self.pool(x))
        x = self.hidden(x)
        return self.fc(self.dropout(x))


def small_cnn(num_classes: int, in_channels: int, channels: Sequence[int] = (8, 16),
              hidden: int = 0, dropout: float = 0.0, pool_size: int = 1) -> SmallCNN:
    """Small configurable CNN: conv-BN-ReLU-maxpool blocks, pooling, optional hidden FC."""
    return SmallCNN(num_classes, in_channels, list(channels), hidden, dropout, pool_size)


# --- cnn5 -----------------------------------------------------------------------


CNN5_CHANNELS = (32, 32, 64, 64, 128)


class CNN5Params(DropoutParams):
    """``cnn5``: the widths of its five convolutions; ``dropout`` before the output layer."""

    channels: list[PositiveInt] = Field(
        default_factory=lambda: list(CNN5_CHANNELS), min_length=5, max_length=5,
        description="output channels of the five conv3x3-BN-ReLU layers",
    )


class CNN5(nn.Module):
    """``layer1`` (2 convs) -> ``down1`` -> ``layer2`` (2 convs) -> ``down2`` ->
    ``layer3`` (1 conv) -> ``pool`` -> ``dropout`` -> ``fc``."""

    def __init__(self, num_classes: int, in_channels: int, channels: Sequence[int] = CNN5_CHANNELS,
                 dropout: float = 0.0):
        super().__init__()
        c = list(channels)
        if len(c) != 5:
            raise ValueError(f"cnn5 needs five channel widths, got {c}")
        self.layer1 = nn.Sequential(conv_bn_relu(in_channels, c[0]), conv_bn_relu(c[0], c[1]))
        self.down1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.layer2 = nn.Sequential(conv_bn_relu(c[1], c[2]), conv_bn_relu(c[2], c[3]))
        self.down2 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.layer3 = nn.Sequential(conv_bn_relu(c[3], c[4]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c[4], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down1(self.layer1(x))
        x = self.down2(self.layer2(x))
        x = self.layer3(x)
        x = self.flatten(self.pool(x))
        return self.fc(self.dropout(x))


def cnn5(num_classes: int, in_channels: int, channels: Sequence[int] = CNN5_CHANNELS,
         dropout: float = 0.0) -> CNN5:
    """Five-conv BN CNN, a CPU-friendly teacher for (Fashion-)MNIST."""
    return CNN5(num_classes, in_channels, list(channels), dropout)
