"""Strong augmentation (RandAugment-style) of whole batches, on the batch's device.

Why: semi-supervised methods (UDA, FixMatch, Meta Pseudo Labels) feed every
step a large unlabeled batch in two views, a weak one (flip + crop) and a
strong one (RandAugment, Cubuk et al. 2020, then Cutout). torchvision's
``v2.RandAugment`` draws one op sequence per call, so a batch would need a
Python loop over its images, far too slow for a GPU step. This is the one
RandAugment of the project: ``BatchAugment(randaugment=...)`` uses it too.
Here every sample gets its own ``num_ops`` ops, signs and cutout box
from one vectorised draw, and each op runs once per slot on the rows that drew
it (index masks: a loop over the ~14 ops, never over samples). The same code
runs on the CPU for tests and small runs.

Conventions, for ``x`` of shape ``[B, C, H, W]``:

- uint8 in, uint8 out (values 0..255); float in, float out (values in [0, 1]).
  Ops work in float and quantise back once at the end, so a uint8 image comes
  back exactly where an op is the identity.
- ``magnitude`` is on torchvision's RandAugment scale 0..30 (``MAX_MAGNITUDE``);
  each op maps ``magnitude / 30`` to its own range (torchvision's ranges:
  factor ``1 +- 0.9 m``, rotation ``+- 30 m`` degrees, shear ``+- 0.3 m``,
  translation ``+- 150/331 m`` of the side, posterize ``8 - round(4 m)`` bits,
  solarize threshold ``1 - m``), with a random sign per sample where the op
  has one. At magnitude 0 every op with a magnitude is the identity (solarize
  inverts pixels strictly above its threshold so that this holds; PIL and
  torchvision use ``>=``). ``autocontrast``, ``equalize`` and ``identity`` have
  no magnitude.
- Geometric ops (rotate, shear, translate) are one affine map per sample,
  sampled bilinearly with ``affine_grid`` + ``grid_sample``, zero fill.
- Randomness: pass a ``torch.Generator`` for reproducible draws (same seed,
  same output); draws are made on the generator's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .crop_flip import _rand, _randint, random_crop, random_flip

MAX_MAGNITUDE = 30
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
COLOR_OPS = ("identity", "autocontrast", "equalize", "solarize", "color", "posterize", "contrast",
             "brightness", "sharpness")
OPS = COLOR_OPS + GEOMETRIC_OPS
"""The RandAugment op list (the 14 ops of Cubuk et al. 2020, torchvision's set)."""

MAGNITUDE_OPS = tuple(op for op in OPS if op not in ("identity", "autocontrast", "equalize"))
"""Ops whose strength is set by the magnitude (the identity at magnitude 0)."""


# --- helpers -------------------------------------------------------------------


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 (or float 0..1) images as float32 in [0, 1]."""
    return x.to(torch.float32).div(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)


def from_unit(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Back to ``dtype``: uint8 rounds to the nearest level."""
    x = x.clamp(0.0, 1.0)
    if dtype == torch.uint8:
        return x.mul(255.0).round_().to(torch.uint8)
    return x.to(dtype)


def _per_sample(values: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A per-sample value (or a scalar) shaped [B, 1, 1, 1] for broadcasting over ``x``."""
    v = torch.as_tensor(values, dtype=torch.float32, device=x.device)
    return v.expand(x.shape[0]).reshape(-1, 1, 1, 1)


def blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """PIL's ImageEnhance: ``factor`` 1 is ``x``, 0 is ``degenerate``; clamped to [0, 1].

    Written as ``f x + (1 - f) d`` so that ``f == 1`` returns ``x`` exactly.
    """
    f = _per_sample(factor, x)
    return (f * x + (1 - f) * degenerate).clamp_(0.0, 1.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (PIL's "L"), [B, 1, H, W]; a 1-channel image is its own gray."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


# --- colour ops: x float [B, C, H, W] in [0, 1], per-sample parameters [B] ----------


def brightness(x: torch.Tensor, factor) -> torch.Tensor:
    return blend(x, torch.zeros_like(x), factor)


def color(x: torch.Tensor, factor) -> torch.Tensor:
    """Saturation: blend with the grayscale image (no-op on 1-channel images)."""
    return blend(x, grayscale(x).expand_as(x), factor)


def contrast(x: torch.Tensor, factor) -> torch.Tensor:
    """Blend with the image's mean gray level (one value per sample)."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return blend(x, mean.expand_as(x), factor)


def sharpness(x: torch.Tensor, factor) -> torch.Tensor:
    """Blend with PIL's SMOOTH-filtered image (3x3, centre 5, /13); the border stays as is."""
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return x
    c = x.shape[1]
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return blend(x, degenerate, factor)


def posterize(x: torch.Tensor, bits) -> torch.Tensor:
    """Keep the top ``bits`` (1..8) bits of each 8-bit value."""
    levels = x.mul(255.0).round().to(torch.int64)
    shift = (8 - torch.as_tensor(bits, device=x.device).to(torch.int64).expand(x.shape[0])).reshape(-1, 1, 1, 1)
    mask = (255 >> shift) << shift  # 8-bit mask with the low (8 - bits) bits cleared
    return (levels & mask).to(x.dtype) / 255.0


def solarize(x: torch.Tensor, threshold) -> torch.Tensor:
    """Invert the pixels strictly above ``threshold`` (in [0, 1]; 1 is the identity)."""
    return torch.where(x > _per_sample(threshold, x), 1.0 - x, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to the full range (flat channels unchanged)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1.0 / (hi - lo).clamp_min(1e-12))
    return torch.where(flat, x, ((x - lo) * scale).clamp_(0.0, 1.0))


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's histogram equalisation of each channel of each image, on 8-bit levels.

    One 256-bin histogram per (image, channel) by ``scatter_add``; the lookup
    table follows PIL (and torchvision): ``step`` is the count of all pixels but
    those of the last non-empty bin, over 255; a channel with ``step == 0`` is
    left unchanged.
    """
    b, c, h, w = x.shape
    levels = x.mul(255.0).round().to(torch.int64).reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    bins = torch.arange(256, device=x.device)
    last = torch.where(hist > 0, bins, -1).amax(dim=1, keepdim=True)  # last non-empty bin
    step = (h * w - hist.gather(1, last)) // 255
    safe = step.clamp_min(1)
    lut = (hist.cumsum(1) + safe // 2) // safe
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)  # the LUT starts at 0 for the first level
    out = torch.where(step > 0, lut.gather(1, levels), levels)
    return (out.to(x.dtype) / 255.0).reshape(b, c, h, w)


# --- geometric ops ---------------------------------------------------------------


def affine(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample each image through its own 2x3 map from output to input pixel offsets.

    ``matrix`` [B, 2, 3] maps an output pixel's position relative to the image
    centre, in pixels (x right, y down), to the input position it is read from
    (bilinear, zero outside). Converted to ``affine_grid``'s normalised
    coordinates here, so non-square images rotate without distortion.
    """
    b, _, h, w = x.shape
    m = matrix.to(torch.float32)
    theta = torch.stack([
        torch.stack([m[:, 0, 0], m[:, 0, 1] * h / w, m[:, 0, 2] * 2 / w], dim=1),
        torch.stack([m[:, 1, 0] * w / h, m[:, 1, 1], m[:, 1, 2] * 2 / h], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def geometric(x: torch.Tensor, op: str, amount) -> torch.Tensor:
    """One geometric op on float images with a per-sample signed ``amount`` (or one for all).

    ``amount`` is degrees for ``rotate``, the shear factor for ``shear_*`` and a
    fraction of the side for ``translate_*`` (positive: content moves right/down).
    """
    if op not in GEOMETRIC_OPS:
        raise ValueError(f"unknown geometric op {op!r}; known: {', '.join(GEOMETRIC_OPS)}")
    b, _, h, w = x.shape
    a = torch.as_tensor(amount, dtype=torch.float32, device=x.device).expand(b)
    matrix = torch.zeros(b, 2, 3, device=x.device)
    matrix[:, 0, 0] = matrix[:, 1, 1] = 1.0
    _fill_matrix(matrix, torch.arange(b, device=x.device), op, a, h, w)
    return affine(x, matrix)


def _fill_matrix(m: torch.Tensor, rows: torch.Tensor, name: str, a: torch.Tensor, h: int, w: int) -> None:
    if name == "rotate":  # counter-clockwise on screen for a > 0, as PIL and torchvision
        rad = a * (math.pi / 180.0)
        cos, sin = torch.cos(rad), torch.sin(rad)
        m[rows, 0, 0], m[rows, 0, 1] = cos, -sin
        m[rows, 1, 0], m[rows, 1, 1] = sin, cos
    elif name == "shear_x":
        m[rows, 0, 1] = a
    elif name == "shear_y":
        m[rows, 1, 0] = a
    elif name == "translate_x":  # content moves right by a * w pixels
        m[rows, 0, 2] = -a * w
    elif name == "translate_y":
        m[rows, 1, 2] = -a * h


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None,
           fill: float = 127 / 255) -> torch.Tensor:
    """Fill a ``size`` x ``size`` square at a random centre of each image with gray.

    The centre is uniform over the image and the square is clipped at the
    border (DeVries and Taylor 2017; the MPL PyTorch reimplementation's
    ``CutoutAbs`` with gray 127).
    """
    if size <= 0 or x.shape[0] == 0:
        return x
    b, _, h, w = x.shape
    cy = _randint(h, (b,), generator, x.device).reshape(-1, 1, 1)
    cx = _randint(w, (b,), generator, x.device).reshape(-1, 1, 1)
    top, left = cy - size // 2, cx - size // 2
    ys = torch.arange(h, device=x.device).reshape(1, -1, 1)
    xs = torch.arange(w, device=x.device).reshape(1, 1, -1)
    box = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return torch.where(box[:, None], torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)


# --- RandAugment -------------------------------------------------------------------


def _apply_color(name: str, x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """One colour op on rows ``x`` at magnitude fraction ``m`` with per-row signs."""
    if name == "identity":
        return x
    if name == "autocontrast":
        return autocontrast(x)
    if name == "equalize":
        return equalize(x)
    if name == "solarize":
        return solarize(x, torch.full_like(sign, 1.0 - m))
    if name == "posterize":
        return posterize(x, torch.full_like(sign, 8 - round(4 * m), dtype=torch.int64))
    factor = 1.0 + 0.9 * m * sign
    return {"color": color, "contrast": contrast, "brightness": brightness, "sharpness": sharpness}[name](x, factor)


GEOMETRIC_RANGE = {"rotate": 30.0, "shear_x": 0.3, "shear_y": 0.3, "translate_x": 150 / 331,
                   "translate_y": 150 / 331}


def check_rand_augment(num_ops: int, magnitude: float, ops: Sequence[str]) -> None:
    unknown = set(ops) - set(OPS)
    if unknown:
        raise ValueError(f"unknown ops {sorted(unknown)}; known: {', '.join(OPS)}")
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"magnitude must be in [0, {MAX_MAGNITUDE}], got {magnitude}")
    if num_ops < 0:
        raise ValueError(f"num_ops must be >= 0, got {num_ops}")


def draw_rand_augment(n: int, num_ops: int, ops: Sequence[str] = OPS, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``rand_augment``'s draw for ``n`` samples: each sample's op indices into ``ops`` and signs (+-1),
    both ``[n, num_ops]`` (slot ``k`` is applied ``k``-th)."""
    device = torch.device(device)
    choice = _randint(len(ops), (num_ops, n), generator, device)
    sign = torch.where(_rand((num_ops, n), generator, device) < 0.5, -1.0, 1.0)
    return choice.T, sign.T


def apply_rand_augment(x: torch.Tensor, magnitude: float, choice: torch.Tensor, sign: torch.Tensor,
                       ops: Sequence[str] = OPS) -> torch.Tensor:
    """RandAugment with given draws (``draw_rand_augment``): no randomness here."""
    b, num_ops = choice.shape
    if b == 0 or num_ops == 0 or not ops:
        return x
    choice, sign = choice.to(x.device).T, sign.to(x.device).T
    dtype = x.dtype
    out = to_unit(x)
    m = magnitude / MAX_MAGNITUDE
    ops = list(ops)
    geometric = torch.tensor([op in GEOMETRIC_OPS for op in ops], device=x.device)
    scale = torch.tensor([GEOMETRIC_RANGE.get(op, 0.0) for op in ops], device=x.device)
    for slot in range(num_ops):
        picked, s = choice[slot], sign[slot]
        rows = geometric[picked].nonzero().squeeze(1)
        if rows.numel():
            amount = scale[picked[rows]] * m * s[rows]
            matrix = torch.zeros(rows.numel(), 2, 3, device=x.device)
            matrix[:, 0, 0] = matrix[:, 1, 1] = 1.0
            for k, op in enumerate(ops):
                if op in GEOMETRIC_OPS:
                    sub = (picked[rows] == k).nonzero().squeeze(1)
                    _fill_matrix(matrix, sub, op, amount[sub], out.shape[2], out.shape[3])
            out[rows] = affine(out[rows], matrix)
        for k, op in enumerate(ops):
            if op in GEOMETRIC_OPS or op == "identity":
                continue
            rows = (picked == k).nonzero().squeeze(1)
            if rows.numel():
                out[rows] = _apply_color(op, out[rows], m, s[rows])
    return from_unit(out, dtype)


def rand_augment(x: torch.Tensor, num_ops: int, magnitude: float, generator: torch.Generator | None = None,
                 ops: Sequence[str] = OPS) -> torch.Tensor:
    """RandAugment with its own draw for every sample: ``num_ops`` ops from ``ops`` at ``magnitude``.

    Each sample draws its ops uniformly with replacement and one random sign
    per op; the ops apply in draw order. Within a slot, each op runs once on
    the rows that drew it (geometric ops together, as one affine resample).
    The same as ``apply_rand_augment`` of ``draw_rand_augment``'s draw.
    """
    check_rand_augment(num_ops, magnitude, ops)
    b = x.shape[0]
    if b == 0 or num_ops == 0 or not ops:
        return x
    choice, sign = draw_rand_augment(b, num_ops, ops, generator, x.device)
    return apply_rand_augment(x, magnitude, choice, sign, ops)


@dataclass
class StrongAugment:
    """The strong view of UDA / MPL: crop and flip, then RandAugment, then Cutout, per sample.

    ``cutout`` is the side of the square as a fraction of the shorter image
    side (0 = off; the MPL reimplementation uses half the side). Callable like
    ``BatchAugment``: ``augment(x, generator)`` on uint8 or float batches.
    """

    num_ops: int = 2
    magnitude: float = 10
    cutout: float = 0.5
    crop_padding: int = 0
    flip: bool = False
    ops: tuple[str, ...] = OPS

    @property
    def active(self) -> bool:
        return self.num_ops > 0 or self.cutout > 0 or self.crop_padding > 0 or self.flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.crop_padding > 0:
            x = random_crop(x, self.crop_padding, generator)
        if self.flip:
            x = random_flip(x, generator)
        x = rand_augment(x, self.num_ops, self.magnitude, generator, self.ops)
        size = round(self.cutout * min(x.shape[-2:]))
        if size > 0:
            x = cutout(x, size, generator, fill=127 if x.dtype == torch.uint8 else 127 / 255)
        return x
