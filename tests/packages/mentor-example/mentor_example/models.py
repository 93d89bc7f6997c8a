"""A model factory: an MLP whose first layer is sized by the input it is given."""

import math

from pydantic import Field
from torch import nn

from mentor import Params, hookimpl


class MLPParams(Params):
    hidden: int = Field(default=64, ge=1, description="width of the hidden layer")


class MLP(nn.Module):
    """flatten -> hidden -> act -> head; `mentor layers` names the nodes (e.g. `act`) for feature losses."""

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], hidden: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(in_channels * math.prod(image_size), hidden)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.act(self.hidden(self.flatten(x))))


def example_mlp(num_classes: int, in_channels: int, image_size: tuple[int, int], hidden: int = 64) -> nn.Module:
    # declaring `image_size` asks mentor for the data's (height, width)
    return MLP(num_classes, in_channels, image_size, hidden)


@hookimpl
def register_models(register):
    register("example_mlp", example_mlp, params=MLPParams, description="a one-hidden-layer MLP sized by its input")
