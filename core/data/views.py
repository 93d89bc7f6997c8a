"""Recorded augmented views: a fixed number of augmentations per image, drawn once and rebuilt exactly.

Why: a frozen teacher's output on an augmented image depends on the image and
on the augmentation's parameters only. Record ``V`` draws per training image
(crop offsets, flips, RandAugment ops and signs: ``BatchAugment.draw``) and
the teacher can be run once per recorded view, ahead of training; each epoch
the student then sees one of those views, rebuilt from its parameters on the
device, and the stored teacher output is exactly the teacher's output for
the pixels the student sees.

Which view an image shows in epoch ``e``: ``(offset[i] + e) % V``, with
``offset`` drawn per image from the stage's seed, so every image cycles
through all its views, each ``V`` epochs, and images do not move in lockstep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .augment import AugmentDraw, BatchAugment
from .splits import derive_seed


def draw_views(augment: BatchAugment, n: int, views: int, seed: int) -> AugmentDraw:
    """``views`` draws for each of ``n`` images: every tensor ``[views, n, ...]``, on the CPU.

    View ``v``'s draw comes from a CPU generator seeded from ``(seed, v)``, so it is the
    same on every machine and device."""
    per_view = []
    for v in range(views):
        g = torch.Generator().manual_seed(derive_seed(seed, "view", v))
        per_view.append(augment.draw(n, g, "cpu"))
    names = per_view[0].tensors().keys()
    return type(per_view[0])(**{name: torch.stack([d.tensors()[name] for d in per_view]) for name in names})


@dataclass
class RecordedViews:
    """``Batches(views=...)``: each row's view of an epoch, rebuilt from recorded draws.

    ``draws`` holds ``[V, N, ...]`` tensors (``draw_views``); ``offsets`` ``[N]`` says which
    view each image starts from (``for_stage``)."""

    augment: BatchAugment
    draws: AugmentDraw
    offsets: torch.Tensor
    count: int  # V

    @classmethod
    def for_stage(cls, augment: BatchAugment, draws: AugmentDraw, count: int, n: int, seed: int) -> RecordedViews:
        g = torch.Generator().manual_seed(derive_seed(seed, "view offsets"))
        return cls(augment, draws, torch.randint(count, (n,), generator=g), count)

    def to(self, device: torch.device | str) -> RecordedViews:
        return RecordedViews(self.augment, self.draws.map(lambda t: t.to(device)), self.offsets.to(device),
                             self.count)

    def subset(self, rows: torch.Tensor) -> RecordedViews:
        """The views of ``rows`` only, as rows ``0 .. len(rows)-1`` (for ``ImageSet.subset(rows)``): row ``j``
        shows in each epoch the view row ``rows[j]`` shows."""
        rows = rows.to(self.offsets.device)
        return RecordedViews(self.augment, self.draws.map(lambda t: t[:, rows]), self.offsets[rows], self.count)

    def view_of(self, rows: torch.Tensor, epoch: int) -> torch.Tensor:
        """The view (0 .. V-1) each of ``rows`` shows in ``epoch``."""
        return (self.offsets[rows.to(self.offsets.device)] + epoch) % self.count

    def draw_of(self, rows: torch.Tensor, epoch: int) -> AugmentDraw:
        rows = rows.to(self.offsets.device)
        views = self.view_of(rows, epoch)
        return self.draws.map(lambda t: t[views, rows])

    def apply(self, x: torch.Tensor, rows: torch.Tensor, epoch: int) -> torch.Tensor:
        """``x`` (the uint8 images of ``rows``) as the views they show in ``epoch``."""
        return self.augment.apply(x, self.draw_of(rows, epoch))
