"""GPU-style batch augmentation (mentor.data.augment) against its definition, on the CPU.

tests/test_data.py checks that a crop is some window of the padded input and
that flips are mirrors or identities; here: the exact translation semantics
and the range of offsets, the composition crop-then-flip, value ranges,
per-sample independence, determinism, and the padding's value after
normalisation in ``Batches``.
"""

from __future__ import annotations

import torch

from mentor.data.augment import BatchAugment
from mentor.data.crop_flip import random_crop, random_flip
from mentor.data.loader import Batches
from mentor.data.types import ImageSet


def translated(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` [C, H, W] moved so that output (y, x) = input (y + dy, x + dx), zeros outside (by definition)."""
    c, h, w = image.shape
    out = torch.zeros_like(image)
    for y in range(h):
        for x in range(w):
            if 0 <= y + dy < h and 0 <= x + dx < w:
                out[:, y, x] = image[:, y + dy, x + dx]
    return out


def offsets_of(x: torch.Tensor, out: torch.Tensor, p: int) -> list[tuple[int, int] | None]:
    """Each sample's (dy, dx) in [-p, p]^2 with ``out[i] == translated(x[i], dy, dx)``, None if there is none."""
    found = []
    for i in range(len(x)):
        match = [(dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1)
                 if torch.equal(out[i], translated(x[i], dy, dx))]
        found.append(match[0] if len(match) == 1 else None)
    return found


def test_crop_is_a_translation_with_zero_fill_and_offsets_cover_minus_p_to_p():
    p = 2
    x = torch.randint(1, 256, (200, 2, 6, 5), dtype=torch.uint8)  # no zeros: each offset shows uniquely
    out = random_crop(x, p, torch.Generator().manual_seed(0))
    offsets = offsets_of(x, out, p)
    assert all(o is not None for o in offsets), "every sample is exactly one translation in [-p, p]^2"
    assert set(offsets) == {(dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1)}  # all 25 drawn


def test_flip_is_an_exact_horizontal_mirror():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4).repeat(16, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(0))
    for i in range(len(x)):
        mirror = torch.stack([x[i][:, :, 3 - j] for j in range(4)], dim=-1)  # column j <- column W-1-j
        assert torch.equal(out[i], mirror) or torch.equal(out[i], x[i])
    flipped = [not torch.equal(out[i], x[i]) for i in range(len(x))]
    assert 0 < sum(flipped) < len(x)


def test_crop_then_flip_composition():
    p = 1
    x = torch.randint(1, 256, (64, 3, 5, 5), dtype=torch.uint8)
    aug = BatchAugment(crop_padding=p, flip=True)
    out = aug(x, torch.Generator().manual_seed(5))
    kinds = set()
    for i in range(len(x)):
        crops = {(dy, dx): translated(x[i], dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1)}
        plain = [o for o, c in crops.items() if torch.equal(out[i], c)]
        mirrored = [o for o, c in crops.items() if torch.equal(out[i], c.flip(-1))]
        assert plain or mirrored, f"sample {i} is neither a crop nor a mirrored crop"
        kinds.add("mirrored" if mirrored and not plain else "plain")
    assert kinds == {"plain", "mirrored"}


def test_shape_dtype_and_range_are_preserved():
    aug = BatchAugment(crop_padding=3, flip=True)
    x8 = torch.randint(10, 200, (32, 3, 8, 8), dtype=torch.uint8)
    out8 = aug(x8, torch.Generator().manual_seed(1))
    assert out8.shape == x8.shape and out8.dtype == torch.uint8
    assert set(out8.unique().tolist()) <= set(x8.unique().tolist()) | {0}  # pixels moved, padding black
    xf = torch.rand(32, 1, 7, 9, dtype=torch.float32) + 0.5
    outf = aug(xf, torch.Generator().manual_seed(1))
    assert outf.shape == xf.shape and outf.dtype == torch.float32
    assert float(outf.min()) >= 0.0 and float(outf.max()) <= float(xf.max())
    assert torch.equal(aug(x8[:0], torch.Generator().manual_seed(1)), x8[:0])  # an empty batch passes through


def test_each_sample_is_augmented_independently_of_the_others():
    aug = BatchAugment(crop_padding=2, flip=True)
    x = torch.randint(1, 256, (16, 1, 6, 6), dtype=torch.uint8)
    other = x.clone()
    other[1:] = torch.randint(1, 256, other[1:].shape, dtype=torch.uint8)  # change every sample but the first
    a = aug(x, torch.Generator().manual_seed(9))
    b = aug(other, torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0])  # same draw for row 0, whatever the other rows hold
    offsets = offsets_of(x, random_crop(x, 2, torch.Generator().manual_seed(9)), 2)
    assert len(set(offsets)) > 1  # and the rows do not share one draw


def test_same_seed_same_batch_other_seed_other_batch():
    aug = BatchAugment(crop_padding=2, flip=True)
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    a = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4)))


def test_batches_pad_with_black_before_normalising():
    images = torch.full((8, 1, 4, 4), 200, dtype=torch.uint8)
    data = ImageSet(images, torch.zeros(8, dtype=torch.long))
    mean, std = 0.25, 0.5
    batches = Batches(data, 8, shuffle=False, mean=(mean,), std=(std,), augment=BatchAugment(crop_padding=2), seed=0)
    x, _ = next(iter(batches))
    black, pixel = (0 - mean) / std, (200 / 255 - mean) / std
    values = x.unique().tolist()
    assert all(abs(v - black) < 1e-5 or abs(v - pixel) < 1e-5 for v in values)
    assert any(abs(v - black) < 1e-5 for v in values)  # some sample was moved: its padding shows, black


def test_randaugment_in_batch_augment_is_the_batched_one_drawn_from_the_generator():
    """``BatchAugment(randaugment=...)`` is strong_augment.rand_augment, seeded by the loop's generator
    (one RandAugment in the project): same seed, same images, whatever torch's global RNG does."""
    from mentor.data.strong_augment import rand_augment

    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    augment = BatchAugment(randaugment=(2, 9))
    torch.manual_seed(1)
    out = augment(x, torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    again = augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    assert torch.equal(out, rand_augment(x, 2, 9, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, x)
