"""The loop's batch augmentation: crop, flip and optional RandAugment, a draw per sample.

torchvision.transforms.v2 on a batch tensor draws one random crop / flip for the whole batch;
``BatchAugment`` composes the vectorised per-sample ops of crop_flip.py and strong_augment.py
(one RandAugment for the whole project), so it runs on the batch's device from a seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .crop_flip import random_crop, random_flip
from .strong_augment import rand_augment


@dataclass
class BatchAugment:
    """Random crop (zero padding ``crop_padding``) then horizontal flip, per sample.

    Exists because torchvision.transforms.v2 on a batch tensor draws one random
    crop / flip for the whole batch; this draws one per sample, vectorised.
    Works on uint8 or float batches ``[B, C, H, W]`` on any device.
    """

    crop_padding: int = 0
    flip: bool = False
    randaugment: tuple[int, float] | None = None  # (num_ops, magnitude): strong_augment.rand_augment

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.randaugment is not None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.randaugment is not None:
            x = rand_augment(x, *self.randaugment, generator)
        if self.crop_padding > 0:
            x = random_crop(x, self.crop_padding, generator)
        if self.flip:
            x = random_flip(x, generator)
        return x
