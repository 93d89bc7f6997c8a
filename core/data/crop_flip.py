"""Random crop and flip of whole batches, an independent draw per sample.

torchvision.transforms.v2 applied to a batch tensor draws its randomness once
per call, so every sample in the batch would get the same crop offset and the
same flip. These functions draw per sample and stay vectorised (no Python loop
over samples), so they run on the batch's device, GPU included.

Randomness comes from an optional ``torch.Generator``; when one is given, the
draws are made on the generator's device and moved to the batch's, so a fixed
generator seed gives the same augmentation every time.

Each op is a draw (``draw_crop``, ``draw_flip``: the random parameters of every
sample) and an apply (``crop_at``, ``flip_where``: no randomness), so that a
recorded draw rebuilds exactly the same view later (the teacher cache does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    if generator is None:
        return torch.randint(high, size, device=device)
    return torch.randint(high, size, generator=generator, device=generator.device).to(device)


def _rand(size: tuple[int, ...], generator: torch.Generator | None,
          device: torch.device) -> torch.Tensor:
    if generator is None:
        return torch.rand(size, device=device)
    return torch.rand(size, generator=generator, device=generator.device).to(device)


def draw_crop(n: int, padding: int, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Crop offsets ``[n, 2]`` (dy, dx), each uniform in ``0 .. 2 * padding``: ``random_crop``'s draw."""
    return _randint(2 * padding + 1, (2, n), generator, torch.device(device)).T


def crop_at(x: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Zero-pad each side by ``padding`` and crop back to ``H x W`` at each sample's ``offsets[i] = (dy, dx)``."""
    if padding == 0 or x.shape[0] == 0:
        return x
    b, c, h, w = x.shape
    offsets = offsets.to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))  # zeros
    wp = w + 2 * padding
    # Flat position in the padded image of output pixel (i, j) at offset 0, then shifted.
    base = (torch.arange(h, device=x.device)[:, None] * wp
            + torch.arange(w, device=x.device)[None, :]).reshape(1, h * w)
    flat = (offsets[:, 0] * wp + offsets[:, 1])[:, None] + base  # [B, H*W]
    out = padded.reshape(b, c, -1).gather(2, flat[:, None, :].expand(b, c, h * w))
    return out.reshape(b, c, h, w)


def random_crop(x: torch.Tensor, padding: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad each side by ``padding`` and crop back to ``H x W`` at a random offset.

    Each sample gets its own offset, uniform in ``0 .. 2 * padding`` along each
    axis (as torchvision's ``RandomCrop(size, padding=padding)`` per image).
    ``padding == 0`` returns ``x`` unchanged. The same as ``crop_at(x, padding,
    draw_crop(len(x), padding, generator, x.device))``.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0 or x.shape[0] == 0:
        return x
    return crop_at(x, padding, draw_crop(x.shape[0], padding, generator, x.device))


def draw_flip(n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
              p: float = 0.5) -> torch.Tensor:
    """Which of ``n`` samples to flip (bool ``[n]``), each with probability ``p``: ``random_flip``'s draw."""
    return _rand((n,), generator, torch.device(device)) < p


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip horizontally the samples whose ``mask`` is true."""
    if x.shape[0] == 0:
        return x
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(-1), x)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None,
                p: float = 0.5) -> torch.Tensor:
    """Flip each sample horizontally with probability ``p``, independently."""
    if x.shape[0] == 0 or p <= 0:
        return x
    return flip_where(x, draw_flip(x.shape[0], generator, x.device, p))
