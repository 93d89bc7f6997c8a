"""The contract between a loss plugin and the stage that computes its inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

STUDENT_LOGITS = "student_logits"
TEACHER_LOGITS = "teacher_logits"
LABELS = "labels"
INDEX = "index"  # each row's position in the stage's training set: keys a loss's per-sample memory


@dataclass
class Outputs:
    """What a stage computed for one batch; a loss reads only what it declared."""

    student_logits: torch.Tensor
    labels: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int = 0  # 0-based epoch of the stage, for losses with a warm-up
    index: torch.Tensor | None = None  # [B] rows of the training set, for losses that need INDEX


class Loss(nn.Module):
    """Base class of loss terms.

    ``needs`` says which of student_logits / teacher_logits / labels the loss
    reads, and ``student_nodes`` / ``teacher_nodes`` which intermediate
    outputs (torchvision feature-extraction node names) it wants, so that a
    stage runs the teacher only when some loss needs it and extracts only the
    named features. A loss with parameters of its own creates them in
    ``build`` from the probed feature shapes; they train with the student and
    are not exported with it. A loss that keeps a memory per training sample
    (CRD's bank) declares ``INDEX``: the stage then sets ``dataset_size`` (the
    training set's rows) before ``build`` and passes each batch's rows as
    ``Outputs.index``.
    """

    needs: ClassVar[frozenset[str]] = frozenset({STUDENT_LOGITS, LABELS})

    dataset_size: int | None = None

    def __init__(self):
        super().__init__()
        self.student_nodes: tuple[str, ...] = ()
        self.teacher_nodes: tuple[str, ...] = ()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Create parameters that depend on feature shapes (batch dim included)."""

    def forward(self, out: Outputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
