"""Built-in logit loss terms: cross-entropy on labels, Hinton's KD (optionally on standardised logits), DIST."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from mentor import EXAMPLE, LABELS, STUDENT_LOGITS, TEACHER_LOGITS, TOKEN, Loss, Outputs, Params, hookimpl


class CrossEntropyParams(Params):
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)


class CrossEntropy(Loss):
    """Cross-entropy between the student's logits and the true labels."""

    needs = frozenset({STUDENT_LOGITS, LABELS})
    targets = frozenset({EXAMPLE, TOKEN})

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, out: Outputs) -> torch.Tensor:
        student, _, labels = out.positions()  # per token: the mean over the positions that count
        return F.cross_entropy(student.float(), labels, label_smoothing=self.label_smoothing)


class KDParams(Params):
    temperature: float = Field(default=4.0, gt=0, description="softening temperature T (with standardize: "
                               "the base temperature applied to the z-scores)")
    standardize: bool = Field(default=False, description="logit standardization (Sun et al. 2024): each sample's "
                              "logits become z-scores before the temperature, for teacher and student alike")


STANDARDIZE_EPS = 1e-7  # Sun et al.'s code: (z - mean) / (eps + std)


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample z-scores of logits [B, C]: (z - mean) / (1e-7 + std), std with Bessel's correction.

    Sun et al. (CVPR 2024) standardise teacher and student logits before the
    softmax, so the student matches the teacher's logit relations rather than
    their range; the unbiased std and the eps follow their released code.
    """
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (STANDARDIZE_EPS + z.std(dim=1, keepdim=True))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            standardize: bool = False) -> torch.Tensor:
    """KL(teacher_T || student_T) averaged over the batch, times T^2 (Hinton et al. 2015).

    The T^2 factor keeps the soft targets' gradient scale independent of T, so
    the weight between this term and cross-entropy keeps its meaning. With
    ``standardize`` both sides are z-scored first (``standardize_logits``).
    """
    t = temperature
    if standardize:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


class KD(Loss):
    """Knowledge distillation on logits: KL between temperature-softened distributions."""

    needs = frozenset({STUDENT_LOGITS, TEACHER_LOGITS})
    targets = frozenset({EXAMPLE, TOKEN})

    def __init__(self, temperature: float = 4.0, standardize: bool = False):
        super().__init__()
        self.temperature, self.standardize = temperature, standardize

    def forward(self, out: Outputs) -> torch.Tensor:
        student, teacher, _ = out.positions()  # per token: KL averaged over the positions that count
        return kd_loss(student, teacher, self.temperature, self.standardize)


class DISTParams(Params):
    temperature: float = Field(default=1.0, gt=0, description="softening temperature tau (the paper: 1 on "
                               "ImageNet, 4 on CIFAR-100)")
    beta: float = Field(default=1.0, ge=0, description="weight of the inter-class relation (per sample)")
    gamma: float = Field(default=1.0, ge=0, description="weight of the intra-class relation (per class)")


PEARSON_EPS = 1e-8


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` ([N, M] -> [N])."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)


def dist_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DIST's (inter, intra) relation losses, each times tau^2 (Huang et al. 2022).

    With y = softmax(z / tau): inter = 1 - mean over samples of the Pearson
    correlation of the student's and teacher's class distributions; intra =
    the same over classes (the columns of the batch's [B, C] matrices).
    """
    t = temperature
    y_s = F.softmax(student_logits.float() / t, dim=1)
    y_t = F.softmax(teacher_logits.float() / t, dim=1)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.T, y_t.T).mean()
    return inter * t * t, intra * t * t


class DIST(Loss):
    """DIST (Huang et al. 2022): match the teacher's relations, not its probabilities.

    beta x inter-class + gamma x intra-class relation (``dist_parts``). The
    paper's CIFAR-100 setting: tau 4, beta = gamma = 2, next to cross-entropy
    with weight 1; ImageNet: tau 1, beta = gamma = 1.
    """

    needs = frozenset({STUDENT_LOGITS, TEACHER_LOGITS})

    def __init__(self, temperature: float = 1.0, beta: float = 1.0, gamma: float = 1.0):
        super().__init__()
        self.temperature, self.beta, self.gamma = temperature, beta, gamma

    def forward(self, out: Outputs) -> torch.Tensor:
        inter, intra = dist_parts(out.student_logits, out.teacher_logits, self.temperature)
        return self.beta * inter + self.gamma * intra


@hookimpl
def register_losses(register):
    register("cross_entropy", CrossEntropy, params=CrossEntropyParams,
             description="cross-entropy with the true labels (optional label smoothing)")
    register("kd", KD, params=KDParams,
             description="Hinton et al. 2015: KL of temperature-softened teacher and student, times T^2 "
             "(standardize: Sun et al. 2024's logit z-scores first)")
    register("dist", DIST, params=DISTParams,
             description="DIST (Huang et al. 2022): inter- and intra-class Pearson relations of the softened outputs")
