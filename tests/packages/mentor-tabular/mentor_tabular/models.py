"""An MLP over feature vectors: its input is the data's number of features (``in_channels``)."""

from pydantic import Field
from torch import nn

from mentor import Params, hookimpl


class MLPParams(Params):
    hidden: int = Field(default=64, ge=1, description="width of each hidden layer")
    depth: int = Field(default=2, ge=1, description="hidden layers")


def tabular_mlp(num_classes: int, in_channels: int, hidden: int = 64, depth: int = 2) -> nn.Module:
    layers, width = [], in_channels
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


@hookimpl
def register_models(register):
    register("tabular_mlp", tabular_mlp, params=MLPParams, description="an MLP over feature vectors")
