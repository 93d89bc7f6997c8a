"""A third-party plugin: one model, one loss, and an epoch observer."""

from pydantic import Field
from torch import nn

from mentor import Loss, Params, hookimpl

EPOCHS_SEEN = []


class MLPParams(Params):
    hidden: int = Field(default=32, ge=1)


def hello_mlp(num_classes, in_channels, hidden=32):
    """A flatten-MLP classifier (for tests)."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class ZeroLoss(Loss):
    def forward(self, out):
        return out.student_logits.sum() * 0


@hookimpl
def register_models(register):
    register("hello_mlp", hello_mlp, params=MLPParams)


@hookimpl
def register_losses(register):
    register("hello_zero", ZeroLoss, description="always zero")


@hookimpl
def on_epoch_end(stage, ctx, epoch, metrics):
    EPOCHS_SEEN.append((stage.name, epoch))
