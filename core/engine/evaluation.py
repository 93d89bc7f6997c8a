"""Scoring a model on a set: accuracy and loss (summed over ranks under torchrun), predictions, and which
epoch is best."""

from __future__ import annotations

import torch
from torch import nn

from ..data.loader import Batches
from ..losses import flatten_positions
from . import distributed
from .runtime import Runtime, autocast


def is_better(metrics: dict[str, float], best: dict[str, float], key: str) -> bool:
    """Whether this epoch beats the best so far on ``key`` (losses lower, others higher).

    Without ``key`` (no validation set) every epoch is "best", so best equals last.
    """
    if key not in metrics or not best or key not in best:
        return True
    if key.endswith("loss"):
        return metrics[key] < best[key]
    return metrics[key] > best[key]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, runtime: Runtime) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` over ``batches``.

    Under torchrun each rank passes its own part of the set; the sums are
    added over ranks, so every rank gets the whole set's metrics.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=runtime.device)
    loss_sum = torch.zeros((), device=runtime.device)
    count = 0
    for x, y in batches.epoch(0):
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(runtime):
            logits = model(x)
        logits, y = flatten_positions(logits, y)  # per token: the positions that count
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    totals = torch.stack([correct.double(), loss_sum.double(),
                          torch.tensor(float(count), device=runtime.device, dtype=torch.float64)])
    correct, loss_sum, count = distributed.all_reduce_sum(totals).tolist()  # one read of the device
    if count == 0:
        return {}
    return {"accuracy": correct / count, "loss": loss_sum / count}


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, predicted classes) over ``batches``, on the CPU."""
    model.eval()
    ys, ps = [], []
    for x, y in batches.epoch(0):
        with autocast(runtime):
            logits, y = flatten_positions(model(x), y)
        ps.append(logits.argmax(1).cpu())
        ys.append(y.cpu())
    return torch.cat(ys), torch.cat(ps)
