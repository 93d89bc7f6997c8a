"""What the consistency-training stages share (mpl, fixmatch, mean_teacher).

The unlabeled batches in two views (``UnlabeledFeed``), the EMA of a model,
the check that a stage has unlabeled images at all, and a labeled split
stretched to a fixed number of steps per epoch (the papers count steps, the
loop counts passes over the labeled split).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mentor import (
    BatchAugment,
    Batches,
    StageContext,
    StrongAugment,
    UnlabeledImages,
    derive_seed,
    distributed,
)


class UnlabeledFeed:
    """Unlabeled batches of ``batch_size``, two views (``weak`` and ``strong``) of the same images.

    Epoch ``e`` draws its order and augmentations from ``(seed, e)`` alone (as
    ``Batches`` does), so a resumed run gets the same batches. When an epoch
    needs more batches than the unlabeled split holds, a new permutation starts.
    ``rows`` holds the positions (in ``data``) of the last batch's images: a
    per-image memory (FlexMatch) and the core's diagnostics key on them.
    ``strong`` may be any augmentation called as ``strong(images, generator)``
    (Mean Teacher's second view is a second crop/flip).
    """

    def __init__(self, data: UnlabeledImages, batch_size: int, weak: BatchAugment,
                 strong: StrongAugment | BatchAugment, *, mean, std, device, seed: int):
        self.batches = Batches(data, max(1, min(batch_size, len(data))), shuffle=True, mean=mean, std=std,
                               device=device, seed=seed)
        self.weak, self.strong = weak, strong
        self.seed, self.device = seed, torch.device(device)
        self.rows = torch.zeros(0, dtype=torch.long)
        self.start(0)

    def start(self, epoch: int) -> None:
        self.epoch, self.round, self.position = epoch, 0, 0
        self.order = self.batches.order(epoch * 100_000)
        seed = distributed.rank_seed(derive_seed(self.seed, "views", epoch))
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        world = distributed.world_size()
        span = self.batches.batch_size * world  # under torchrun, each rank takes its shard of the global batch
        if self.position > 0 and self.position + span > len(self.order):
            self.round += 1
            self.position = 0
            self.order = self.batches.order(self.epoch * 100_000 + self.round)
        rows = distributed.shard(self.order[self.position:self.position + span], distributed.group_rank(), world)
        self.position += span
        self.rows = torch.as_tensor(rows, dtype=torch.long)
        images = self.batches.images[rows].to(self.device, non_blocking=True)  # a no-op for a set held there
        weak = self.weak(images, self.generator) if self.weak.active else images
        strong = self.strong(images, self.generator)
        return self.batches.normalise(weak), self.batches.normalise(strong)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for parameters; buffers (BN statistics) copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def unlabeled_split(ctx: StageContext) -> UnlabeledImages:
    """The labeled source's remainder, or a located error when there is none (exit 2 from the CLI).

    A ``data.unlabeled`` pool (image files) is refused too: these stages draw
    random two-view batches from images held in memory.
    """
    if ctx.experiment.data.unlabeled is not None:
        raise ctx.config_error(("data", "unlabeled"), f"stage '{ctx.stage.name}' ({ctx.stage.kind}) trains on "
                               "the labeled source's remainder (data.labeled_per_class), not on a file pool")
    unlabeled = ctx.splits.unlabeled
    if len(unlabeled) == 0:
        raise ctx.config_error(("data", "labeled_per_class"), f"stage '{ctx.stage.name}' ({ctx.stage.kind}) "
                               "needs unlabeled images: set data.labeled_per_class (the rest of the train "
                               "split becomes unlabeled)")
    return unlabeled


def stretched(data, steps_per_epoch: int | None, batch_size: int):
    """The labeled set repeated (row ``i`` is image ``i % n``) to make ``steps_per_epoch`` full batches.

    Small labeled splits (250 images: 3 batches of 64) would otherwise make an
    epoch (a checkpoint, an evaluation) every few steps.
    """
    if steps_per_epoch is None:
        return data
    rows = steps_per_epoch * batch_size * distributed.world_size()
    return data.subset(torch.arange(max(rows, len(data))) % len(data))


def steps_per_epoch(data, batch_size: int) -> int:
    """The loop's optimizer steps per epoch of ``data`` (its last partial batch is dropped)."""
    global_batch = batch_size * distributed.world_size()
    return len(data) // global_batch if len(data) > global_batch else 1


def fixmatch_cosine(step: int, total_steps: int) -> float:
    """FixMatch's decay: ``cos(7 pi k / (16 K))`` (from 1 to about 0.2 at the end, not to 0)."""
    return math.cos(7 * math.pi * min(step, total_steps) / (16 * max(total_steps, 1)))
