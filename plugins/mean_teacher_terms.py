"""Mean Teacher's ramp-up, consistency loss and teacher decay, as plain functions."""

from __future__ import annotations

import math

import torch


def sigmoid_rampup(position: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = position / length`` clipped to [0, 1] (Laine & Aila 2017; 1 if length is 0)."""
    if length <= 0:
        return 1.0
    t = min(max(position / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Distance between the student's and the (detached) teacher's predictions, a mean over the batch.

    ``mse``: squared difference of the softmaxes, a mean over classes too
    (the reference PyTorch code's sum over classes / C, so its weights carry over);
    ``kl``: KL(teacher || student) summed over classes.
    """
    target = teacher_logits.detach().float().softmax(1)
    if kind == "mse":
        return ((student_logits.float().softmax(1) - target) ** 2).mean()
    log_p = student_logits.float().log_softmax(1)
    return (target * (target.clamp_min(1e-12).log() - log_p)).sum(1).mean()


def teacher_decay(step: int, decay: float, rampup_decay: float | None, in_rampup: bool) -> float:
    """The EMA decay at ``step`` (0-based): ``rampup_decay`` during the ramp-up if given, else ``decay``,
    capped by ``1 - 1 / (step + 1)`` so that early on the teacher is the plain average of the students
    (the reference code's warm start)."""
    alpha = rampup_decay if in_rampup and rampup_decay is not None else decay
    return min(1.0 - 1.0 / (step + 1), alpha)
