"""FixMatch's unlabeled loss and FlexMatch's class-adaptive thresholds, as plain tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mentor import distributed


def unlabeled_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float | torch.Tensor, *,
                   hard: bool = True, temperature: float = 1.0):
    """``mean_i mask_i * CE(target_i, strong_i)`` over ALL unlabeled images, as the paper divides.

    The target comes from the weak view without gradient: its argmax (hard)
    or ``softmax(weak / temperature)`` (soft). ``mask_i``: the weak view's top
    probability is ``>= threshold``, a number or a per-class tensor [C]
    indexed by the pseudo-label (FlexMatch). Returns the loss and the mask,
    labels and confidences [B] (for the step's metrics and FlexMatch's memory).
    """
    probs = weak_logits.detach().float().softmax(1)
    confidence, labels = probs.max(1)
    limit = threshold[labels] if isinstance(threshold, torch.Tensor) else threshold
    mask = (confidence >= limit).to(strong_logits.dtype)
    if hard:
        per_image = F.cross_entropy(strong_logits, labels, reduction="none")
    else:
        target = (weak_logits.detach().float() / temperature).softmax(1)
        per_image = -(target * strong_logits.log_softmax(1)).sum(1)
    return (per_image * mask).mean(), mask, labels, confidence


def convex(x: torch.Tensor) -> torch.Tensor:
    """FlexMatch's mapping M(x) = x / (2 - x): 0 -> 0, 1 -> 1, below the identity in between."""
    return x / (2 - x)


def flexmatch_thresholds(memory: torch.Tensor, num_classes: int, threshold: float, warmup: bool = True):
    """Per-class thresholds ``M(beta_c) * tau`` from the prediction memory (-1: not yet confident).

    ``sigma_c``: images whose latest confident (>= tau) prediction is class c;
    ``beta_c = sigma_c / max(max_c sigma_c, unused)`` with the warm-up,
    ``sigma_c / max_c sigma_c`` without (0 while nothing is confident).
    """
    used = memory >= 0
    sigma = torch.bincount(memory[used], minlength=num_classes).to(torch.float32)
    top = sigma.max()
    if warmup:
        top = torch.maximum(top, (~used).sum().to(torch.float32))
    beta = sigma / top.clamp_min(1)
    return convex(beta) * threshold


class PredictionMemory:
    """FlexMatch's per-image memory: the latest class predicted with confidence >= tau, -1 before.

    Keyed by the image's position in the unlabeled split; checkpointed with the loop's state.
    """

    def __init__(self, size: int, num_classes: int, threshold: float, warmup: bool, device="cpu"):
        self.labels = torch.full((size,), -1, dtype=torch.long, device=device)
        self.num_classes, self.threshold, self.warmup = num_classes, threshold, warmup

    def thresholds(self) -> torch.Tensor:
        return flexmatch_thresholds(self.labels, self.num_classes, self.threshold, self.warmup)

    def update(self, rows: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor) -> None:
        """Record this step's confident predictions (under torchrun, every rank's, so the memories agree)."""
        rows = rows.to(self.labels.device)
        confident = confidence >= self.threshold
        if distributed.active():  # each rank holds a disjoint shard of the batch: add up the updates
            value = torch.zeros(len(self.labels), device=self.labels.device)
            touched = torch.zeros_like(value)
            value[rows[confident]] = labels[confident].float() + 1
            touched[rows[confident]] = 1
            value, touched = distributed.all_reduce_sum(value), distributed.all_reduce_sum(touched)
            hit = touched > 0
            self.labels[hit] = (value[hit] / touched[hit]).round().long() - 1
            return
        self.labels[rows[confident]] = labels[confident]

    def state_dict(self) -> dict:
        return {"labels": self.labels.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.labels = state["labels"].to(self.labels.device)
