"""The loop's batch augmentation: crop, flip and optional RandAugment, a draw per sample.

torchvision.transforms.v2 on a batch tensor draws one random crop / flip for the whole batch;
``BatchAugment`` composes the vectorised per-sample ops of crop_flip.py and strong_augment.py
(one RandAugment for the whole project), so it runs on the batch's device from a seeded generator.

Every op is split into a draw and an apply: ``draw(n)`` returns the random parameters of ``n``
samples (an ``AugmentDraw``: RandAugment's ops and signs, crop offsets, flips), ``apply(x, draw)``
uses them and draws nothing. A draw can therefore be recorded and the very same view rebuilt
later: the teacher cache stores its teacher's outputs per recorded view.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .crop_flip import crop_at, draw_crop, draw_flip, flip_where
from .strong_augment import OPS, apply_rand_augment, check_rand_augment, draw_rand_augment


@dataclass
class AugmentDraw:
    """The random parameters of a batch's augmentation, one row per sample (None: op off).

    ``ops`` and ``signs`` ``[n, num_ops]`` (RandAugment), ``crop`` ``[n, 2]`` offsets (dy, dx),
    ``flip`` bool ``[n]``. Another modality's augmenter subclasses it (a dataclass with its own tensor
    fields, all optional, first dimension ``n``), so that recorded views can stack, index and move them."""

    ops: torch.Tensor | None = None
    signs: torch.Tensor | None = None
    crop: torch.Tensor | None = None
    flip: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def map(self, fn) -> AugmentDraw:
        """A draw with ``fn`` applied to each tensor (indexing rows, moving to a device)."""
        return type(self)(**{name: fn(t) for name, t in self.tensors().items()})


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

    def draw(self, n: int, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> AugmentDraw:
        """The random parameters of ``n`` samples, in the order ``__call__`` draws them."""
        draw = AugmentDraw()
        if self.randaugment is not None and n > 0 and self.randaugment[0] > 0:
            draw.ops, draw.signs = draw_rand_augment(n, self.randaugment[0], OPS, generator, device)
        if self.crop_padding > 0 and n > 0:
            draw.crop = draw_crop(n, self.crop_padding, generator, device)
        if self.flip and n > 0:
            draw.flip = draw_flip(n, generator, device)
        return draw

    def apply(self, x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
        """``x`` augmented with the parameters of ``draw`` (one row per sample of ``x``)."""
        if draw.ops is not None:
            x = apply_rand_augment(x, self.randaugment[1], draw.ops, draw.signs, OPS)
        if draw.crop is not None:
            x = crop_at(x, self.crop_padding, draw.crop)
        if draw.flip is not None:
            x = flip_where(x, draw.flip)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.randaugment is not None:
            check_rand_augment(self.randaugment[0], self.randaugment[1], OPS)
        return self.apply(x, self.draw(x.shape[0], generator, x.device))
