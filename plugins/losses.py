"""Built-in loss terms: cross-entropy on labels and Hinton's logit distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from mentor import LABELS, STUDENT_LOGITS, TEACHER_LOGITS, Loss, Outputs, Params, hookimpl


class CrossEntropyParams(Params):
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)


class CrossEntropy(Loss):
    """Cross-entropy between the student's logits and the true labels."""

    needs = frozenset({STUDENT_LOGITS, LABELS})

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, out: Outputs) -> torch.Tensor:
        return F.cross_entropy(out.student_logits.float(), out.labels, label_smoothing=self.label_smoothing)


class KDParams(Params):
    temperature: float = Field(default=4.0, gt=0, description="softening temperature T")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) averaged over the batch, times T^2 (Hinton et al. 2015).

    The T^2 factor keeps the soft targets' gradient scale independent of T, so
    the weight between this term and cross-entropy keeps its meaning.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


class KD(Loss):
    """Knowledge distillation on logits: KL between temperature-softened distributions."""

    needs = frozenset({STUDENT_LOGITS, TEACHER_LOGITS})

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, out: Outputs) -> torch.Tensor:
        return kd_loss(out.student_logits, out.teacher_logits, self.temperature)


@hookimpl
def register_losses(register):
    register("cross_entropy", CrossEntropy, params=CrossEntropyParams,
             description="cross-entropy with the true labels (optional label smoothing)")
    register("kd", KD, params=KDParams,
             description="Hinton et al. 2015: KL of temperature-softened teacher and student, times T^2")
