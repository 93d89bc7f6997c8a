"""Pieces shared by the built-in architectures: weight initialisation and params."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from mentor import Params


class DropoutParams(Params):
    """A single ``dropout`` probability; families say where they apply it."""

    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability, 0 = off")


class ResidualParams(DropoutParams):
    """Residual families also take stochastic depth (Huang et al. 2016), Noisy Student's third noise."""

    stochastic_depth: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="drop probability of the last residual block; earlier blocks scale linearly down to 0",
    )


def drop_rates(stochastic_depth: float, blocks: int) -> list[float]:
    """Linear decay rule: block i of n is dropped with probability p * (i + 1) / n."""
    return [stochastic_depth * (i + 1) / blocks for i in range(blocks)]


def init_weights(model: nn.Module) -> None:
    """He (kaiming normal, fan_out) for convs, BN to identity, small-normal linear heads.

    fan_out keeps the backward signal stable in deep ReLU nets and is what
    RepDistiller and torchvision use, so from-scratch results are comparable.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
