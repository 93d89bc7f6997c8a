"""Several processes (torchrun): a step run through DistributedDataParallel, so gradients are averaged."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import distributed
from .runtime import Runtime

StepFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


class StepModule(nn.Module):
    """The trained modules with the step as forward: what DistributedDataParallel wraps.

    Methods' steps call their models directly (``model(x)``, a feature tap);
    running the whole step as this module's forward puts every such call
    inside DDP's forward, so DDP sees each iteration and averages the
    gradients of all trained parameters, however the step reached them.
    """

    def __init__(self, step: StepFn, modules: list[nn.Module]):
        super().__init__()
        self.step = step
        self.trained = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, y: torch.Tensor, *info):
        return self.step(x, y, *info)


def data_parallel(task, step: StepFn, runtime: Runtime) -> StepFn:
    """The step to call: as it is in one process, through DDP with several."""
    if not distributed.active():
        return step
    if task.manual:
        if not task.averages_gradients:
            raise ValueError("this method steps its own optimizers without averaging gradients over processes "
                             "(TrainTask.averages_gradients): run it in one process, not under torchrun")
        return step
    trained = [task.model, *task.extra.values()]
    if not any(p.requires_grad for m in trained for p in m.parameters()):
        return step
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(StepModule(step, trained), device_ids=device_ids)
