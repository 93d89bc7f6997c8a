"""VGG with BatchNorm for small images, as defined in RepDistiller.

Why this family: vgg13 is a standard CIFAR-100 teacher and vgg8 its student;
a plain (residual-free) architecture is also the usual partner in
cross-architecture distillation pairs.

Architecture: five stages of 3x3 conv (with bias) + BN + ReLU; a 2x2 max-pool
after each of the first three stages (32 -> 16 -> 8 -> 4), then global average
pooling and one linear layer on 512 features. RepDistiller adds a fourth pool
only for 64x64 inputs (``if h == 64`` in ``forward``); here the pooling is fixed
at construction, which keeps ``forward`` free of data-dependent control flow
for feature extraction, and the adaptive pooling at the end handles any size.
The max-pools use ``ceil_mode`` so that odd and tiny inputs (28 -> 14 -> 7 -> 4)
never pool below 1x1.

Node names: ``layer1..layer5`` (each a flat ``nn.Sequential`` of conv, bn, relu
triples, so ``layer4.4`` is the last BN of stage 4, its pre-ReLU feature),
``pool1..pool3``, ``pool``, ``dropout``, ``fc``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._common import DropoutParams, init_weights


class VGGParams(DropoutParams):
    """VGG parameters: ``dropout`` before the final linear layer."""


VGG8 = ((64,), (128,), (256,), (512,), (512,))
VGG13 = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))


def _stage(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        in_channels = w
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``layer1`` -> ``pool1`` -> ``layer2`` -> ``pool2`` -> ``layer3`` -> ``pool3`` ->
    ``layer4`` -> ``layer5`` -> ``pool`` -> ``dropout`` -> ``fc``."""

    def __init__(self, cfg: tuple[tuple[int, ...], ...], num_classes: int, in_channels: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        if len(cfg) != 5:
            raise ValueError(f"VGG needs five stages, got {len(cfg)}")
        ins = (in_channels,) + tuple(stage[-1] for stage in cfg[:-1])
        self.layer1 = _stage(ins[0], cfg[0])
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.layer2 = _stage(ins[1], cfg[1])
        self.pool2 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.layer3 = _stage(ins[2], cfg[2])
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.layer4 = _stage(ins[3], cfg[3])
        self.layer5 = _stage(ins[4], cfg[4])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cfg[4][-1], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.layer1(x))
        x = self.pool2(self.layer2(x))
        x = self.pool3(self.layer3(x))
        x = self.layer4(x)
        x = self.layer5(x)
        x = self.flatten(self.pool(x))
        return self.fc(self.dropout(x))


def vgg8(num_classes: int, in_channels: int, dropout: float = 0.0) -> VGG:
    """VGG-8 with BatchNorm (one conv per stage, ~3.96M parameters at 100 classes)."""
    return VGG(VGG8, num_classes, in_channels, dropout)


def vgg13(num_classes: int, in_channels: int, dropout: float = 0.0) -> VGG:
    """VGG-13 with BatchNorm (two convs per stage, ~9.46M parameters at 100 classes)."""
    return VGG(VGG13, num_classes, in_channels, dropout)


FACTORIES = {"vgg8": vgg8, "vgg13": vgg13}
