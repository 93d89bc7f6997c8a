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

# What a prediction is for: one class per example (logits [B, C], labels [B]) or one per token (logits
# [B, L, C], labels [B, L], a mask [B, L] of the positions that count). Losses and methods say which they take.
EXAMPLE, TOKEN = "example", "token"
IGNORE_INDEX = -100  # a label that does not count (padding), as PyTorch's cross-entropy and transformers use it


def flatten_positions(logits: torch.Tensor, labels: torch.Tensor | None,
                      mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``[B, C]`` and labels ``[B]`` as they are; per token (``[B, L, C]``, ``[B, L]``) the positions
    that count, ``[N, C]`` and ``[N]``: kept by ``mask`` and not labelled ``IGNORE_INDEX``."""
    if logits.ndim != 3:
        return logits, labels
    keep = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    if mask is not None:
        keep &= mask.bool()
    if labels is not None:
        keep &= labels != IGNORE_INDEX
    return logits[keep], None if labels is None else labels[keep]


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
    mask: torch.Tensor | None = None  # [B, L] bool: the positions that count, for logits [B, L, C]

    @property
    def per_token(self) -> bool:
        """Whether the logits are per token, ``[B, L, C]``."""
        return self.student_logits.ndim == 3

    def positions(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(student logits, teacher logits, labels) as ``[N, C]``, ``[N, C]``, ``[N]`` over what counts: the
        examples as they are, or the tokens the mask keeps (and whose label is not ``IGNORE_INDEX``), so
        that a loss written for ``[B, C]`` averages over tokens unchanged."""
        if not self.per_token:
            return self.student_logits, self.teacher_logits, self.labels
        keep = torch.ones(self.student_logits.shape[:2], dtype=torch.bool, device=self.student_logits.device)
        if self.mask is not None:
            keep &= self.mask.bool()
        if self.labels is not None:
            keep &= self.labels != IGNORE_INDEX
        return (self.student_logits[keep], None if self.teacher_logits is None else self.teacher_logits[keep],
                None if self.labels is None else self.labels[keep])  # (flatten_positions, for both sides)


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
    training set's rows) and ``dataset_labels`` (their classes, ``[N]``, for a
    loss that draws by class) before ``build`` and passes each batch's rows as
    ``Outputs.index``.
    """

    needs: ClassVar[frozenset[str]] = frozenset({STUDENT_LOGITS, LABELS})
    # what it computes on: one class per example, and (if it says so) one per token through
    # ``Outputs.positions``; a stage refuses a loss that does not take its data's targets
    targets: ClassVar[frozenset[str]] = frozenset({EXAMPLE})

    dataset_size: int | None = None
    dataset_labels: torch.Tensor | None = None

    def __init__(self):
        super().__init__()
        self.student_nodes: tuple[str, ...] = ()
        self.teacher_nodes: tuple[str, ...] = ()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Create parameters that depend on feature shapes (batch dim included)."""

    def forward(self, out: Outputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
