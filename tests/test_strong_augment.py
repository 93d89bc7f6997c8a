"""Batched strong augmentation: per-sample draws, value ranges, identities, and ops against torchvision."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from mentor.data import strong_augment as sa


def images(n=6, c=3, h=20, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("shape", [(6, 3, 20, 24), (5, 1, 28, 28)])
def test_shape_dtype_and_range_are_kept(dtype, shape):
    x = images(*shape)
    x = x if dtype == torch.uint8 else x.float() / 255
    out = sa.StrongAugment(num_ops=3, magnitude=30, cutout=0.4, crop_padding=2, flip=True)(x, gen(1))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    high = 255 if dtype == torch.uint8 else 1.0
    assert out.min() >= 0 and out.max() <= high
    assert not torch.equal(out, x)


def test_every_sample_gets_its_own_draw():
    x = images(1, 3, 16, 16).expand(64, -1, -1, -1).contiguous()  # 64 copies of one image
    out = sa.rand_augment(x, 2, 16, gen(0))
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 20  # one shared draw would give 1
    cut = sa.cutout(torch.zeros(32, 1, 12, 12, dtype=torch.uint8), 4, gen(0), fill=127)
    positions = {tuple((c[0] == 127).nonzero()[0].tolist()) for c in cut}
    assert len(positions) > 8


def test_magnitude_zero_is_the_identity_for_ops_with_a_magnitude():
    x = images()
    assert torch.equal(sa.rand_augment(x, 4, 0, gen(0), ops=sa.MAGNITUDE_OPS), x)
    xf = x.float() / 255
    assert torch.allclose(sa.rand_augment(xf, 4, 0, gen(0), ops=sa.MAGNITUDE_OPS), xf, atol=1e-6)
    assert not torch.equal(sa.rand_augment(x, 4, 5, gen(0), ops=sa.MAGNITUDE_OPS), x)


def test_a_seeded_generator_repeats_its_draws():
    x = images()
    augment = sa.StrongAugment(num_ops=2, magnitude=16, cutout=0.5, crop_padding=4, flip=True)
    assert torch.equal(augment(x, gen(7)), augment(x, gen(7)))
    assert not torch.equal(augment(x, gen(7)), augment(x, gen(8)))


@pytest.mark.parametrize(("op", "reference", "tolerance"), [
    (sa.brightness, TF.adjust_brightness, 1),
    (sa.contrast, TF.adjust_contrast, 1),
    (sa.color, TF.adjust_saturation, 2),  # torchvision rounds its grayscale to uint8 first
    (sa.sharpness, TF.adjust_sharpness, 1),
])
def test_blend_ops_match_torchvision_with_a_factor_per_sample(op, reference, tolerance):
    x = images(4, 3, 16, 16)
    factors = torch.tensor([0.1, 0.5, 1.5, 1.9])
    mine = sa.from_unit(op(sa.to_unit(x), factors), torch.uint8)
    expected = torch.stack([reference(x[i], float(factors[i])) for i in range(4)])
    assert (mine.int() - expected.int()).abs().max() <= tolerance


def test_level_ops_match_torchvision():
    x = images(4, 3, 16, 16)
    low_contrast = torch.randint(50, 120, (3, 3, 8, 8), generator=gen(2), dtype=torch.uint8)
    u = sa.to_unit(x)
    bits = torch.tensor([1, 3, 5, 8])
    posterized = sa.from_unit(sa.posterize(u, bits), torch.uint8)
    assert torch.equal(posterized, torch.stack([TF.posterize(x[i], int(bits[i])) for i in range(4)]))
    # torchvision inverts pixels >= t; ours inverts pixels > t: compare between two levels
    levels = torch.tensor([10, 100, 200, 255])
    solarized = sa.from_unit(sa.solarize(u, (levels - 0.5) / 255), torch.uint8)
    assert torch.equal(solarized, torch.stack([TF.solarize(x[i], int(levels[i])) for i in range(4)]))
    for batch in (x, low_contrast):
        assert torch.equal(sa.from_unit(sa.equalize(sa.to_unit(batch)), torch.uint8), TF.equalize(batch))
        stretched = sa.from_unit(sa.autocontrast(sa.to_unit(batch)), torch.uint8)
        assert (stretched.int() - TF.autocontrast(batch).int()).abs().max() <= 1
    flat = torch.full((2, 1, 5, 5), 77, dtype=torch.uint8)
    assert torch.equal(sa.from_unit(sa.equalize(sa.to_unit(flat)), torch.uint8), flat)
    assert torch.equal(sa.from_unit(sa.autocontrast(sa.to_unit(flat)), torch.uint8), flat)


def test_geometric_ops_follow_torchvision_conventions():
    x = images(2, 1, 12, 12)
    u = sa.to_unit(x)
    rotated = sa.from_unit(sa.geometric(u, "rotate", 90.0), torch.uint8)
    assert torch.equal(rotated, TF.rotate(x, 90.0))  # counter-clockwise, centre of the image
    moved = sa.from_unit(sa.geometric(u, "translate_x", torch.tensor([3 / 12, -2 / 12])), torch.uint8)
    assert torch.equal(moved[0], TF.affine(x[0], angle=0.0, translate=[3, 0], scale=1.0, shear=[0.0, 0.0]))
    assert torch.equal(moved[1], TF.affine(x[1], angle=0.0, translate=[-2, 0], scale=1.0, shear=[0.0, 0.0]))
    down = sa.from_unit(sa.geometric(u, "translate_y", 2 / 12), torch.uint8)
    assert torch.equal(down[:, :, 2:], x[:, :, :-2]) and (down[:, :, :2] == 0).all()
    odd = images(2, 1, 11, 11)  # the centre row lies on pixel centres
    sheared = sa.from_unit(sa.geometric(sa.to_unit(odd), "shear_x", 1.0), torch.uint8)
    assert torch.equal(sheared[:, :, 5], odd[:, :, 5])  # the centre row stays
    assert torch.equal(sheared[:, :, 6, :-1], odd[:, :, 6, 1:])  # the next reads one pixel further right


def test_cutout_fills_one_clipped_square_per_image():
    x = torch.zeros(64, 1, 10, 10, dtype=torch.uint8)
    out = sa.cutout(x, 4, gen(3), fill=127)
    assert set(out.unique().tolist()) == {0, 127}
    sizes = []
    for image in out[:, 0]:
        rows, cols = (image == 127).nonzero().unbind(1)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height <= 4 and width <= 4 and len(rows) == height * width  # a (clipped) rectangle
        sizes.append(len(rows))
    assert max(sizes) == 16 and min(sizes) < 16  # whole squares inside, clipped ones at the border


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="unknown ops"):
        sa.rand_augment(images(), 1, 5, ops=("blur",))
    with pytest.raises(ValueError, match="magnitude"):
        sa.rand_augment(images(), 1, 31)
