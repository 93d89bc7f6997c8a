"""Which layers of a model are freshly initialised on top of loaded weights.

Why: a model component that loads pretrained weights may have to replace a
layer that does not fit the data (torchvision's classifier head, when the data
has other classes than ImageNet). That is fine for a model a stage then
trains, but a teacher is used as is: its predictions would be random. The
component says so with ``mark_untrained``; ``StageContext.teacher`` refuses
such a model with the component's reason.
"""

from __future__ import annotations

from torch import nn

_ATTRIBUTE = "_mentor_untrained"


def mark_untrained(model: nn.Module, layer: str, reason: str) -> None:
    """Record that ``layer`` of ``model`` holds fresh weights, and why (one line, for an error message)."""
    marks = dict(getattr(model, _ATTRIBUTE, {}))
    marks[layer] = reason
    setattr(model, _ATTRIBUTE, marks)


def untrained_layers(model: nn.Module) -> dict[str, str]:
    """The layers ``mark_untrained`` recorded on ``model`` (name -> reason); empty for a fully loaded one."""
    return dict(getattr(model, _ATTRIBUTE, {}))
