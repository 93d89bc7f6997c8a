"""Batches for the training loop, cut from an in-memory set by indexing.

The fast path: the whole uint8 set sits on the target device and each batch
is one index operation, an optional per-sample augmentation and a
normalisation, all vectorised, with no DataLoader and no workers. A set too
large for the device's memory stays in host memory instead: DataLoader
workers cut the batches there, they are pinned and copied without blocking,
and augmentation and normalisation still run on the device. Both paths give
the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import BatchAugment
from .sharding import shard
from .splits import UnlabeledImages, UnlabeledSet, derive_seed
from .types import ImageSet
from .views import RecordedViews


class Batches:
    """Iterate an ImageSet in (shuffled) batches: index, slice, move, normalise, augment.

    ``epoch(e)`` yields ``(x, y)``: ``x`` float32 ``[B, C, H, W]`` normalised as
    ``(x / 255 - mean) / std`` (float examples of any modality, ``[B, C, ...]``: ``(x - mean) / std``,
    see ``normalise``), ``y`` int64 labels; for an ``UnlabeledSet`` the
    second item is the rows' ``index`` in the source train set instead.

    Determinism: the shuffle order and the augmentation draws of epoch ``e`` come
    from generators seeded from ``(seed, e)`` alone, created afresh for each
    epoch. Epoch ``e`` is therefore the same whether or not epochs ``0 .. e-1``
    ran in this process, which is what makes resuming an interrupted run
    bit-identical to an uninterrupted one. The order is drawn on the CPU (the
    same on every device); augmentation is drawn on ``device``.

    The images stay uint8 and are moved to ``device`` once, here. Augmentation
    is applied to the uint8 batch before normalisation, so crop padding is black
    (pixel value 0), as with torchvision's ``RandomCrop(padding=...)``.

    Several processes (``world_size > 1``, torchrun): ``batch_size`` is per
    process. Every rank draws the same order of epoch ``e``, cuts it into
    global batches of ``batch_size * world_size`` rows and takes its own
    contiguous ``batch_size`` of each (``distributed.shard``), so the ranks'
    rows are disjoint, together they are the batch a single process would
    take with ``batch_size * world_size``, and every rank takes ``len(self)``
    steps. Rank 0 draws the augmentations a single process draws; rank r > 0
    from a seed derived from ``(seed, e, r)``.

    ``placement``: ``device`` holds the set on ``device``; ``host`` keeps it in
    host memory and has ``workers`` DataLoader processes cut the batches
    (pinned, copied with ``non_blocking``); ``auto`` is ``device`` unless the
    set's bytes exceed ``DEVICE_SHARE`` of the CUDA device's free memory.

    ``views``: recorded views (``RecordedViews``, the teacher cache) replace
    ``augment``: each row shows the view recorded for it in that epoch.
    """

    def __init__(self, data: ImageSet | UnlabeledSet | UnlabeledImages, batch_size: int, *, shuffle: bool,
                 drop_last: bool = False, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str = "cpu", augment: BatchAugment | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 placement: Literal["auto", "device", "host"] = "auto", workers: int = 2,
                 views: RecordedViews | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of world_size {world_size} ranks")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment if augment is not None and getattr(augment, "active", True) else None
        self.views = views.to(device) if views is not None else None
        if views is not None and len(views.offsets) != len(data):
            raise ValueError(f"{len(views.offsets)} recorded views' images for a set of {len(data)}")
        self.seed = seed
        self.labeled = isinstance(data, ImageSet)
        targets = data.labels if self.labeled else data.index
        self.resident = resident(data.images, self.device, placement)
        home = self.device if self.resident else torch.device("cpu")
        self.images = data.images.to(home)
        self.targets = targets.to(home)
        self.workers = workers
        self._loader: DataLoader | None = None
        self._sampler = _StepRows()
        c, self.ndim = self.images.shape[1], len(self.images.shape)
        self.mean = self._stat(mean, c, "mean")
        self.std = self._stat(std, c, "std")
        if bool((self.std <= 0).any()):
            raise ValueError(f"std must be positive, got {tuple(std)}")

    def _stat(self, values: Sequence[float], channels: int, what: str) -> torch.Tensor:
        t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
        if len(t) not in (1, channels):
            raise ValueError(f"{what} has {len(t)} values for {channels}-channel images")
        return t.reshape(1, -1, *(1,) * (self.ndim - 2)).to(self.device)

    @property
    def global_batch_size(self) -> int:
        """Rows per step over all ranks."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        n, bs = len(self.images), self.global_batch_size
        return n // bs if self.drop_last else -(-n // bs)

    def order(self, epoch: int) -> torch.Tensor:
        """The row order of epoch ``epoch`` (on ``device``)."""
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(n, device=self.images.device)
        g = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
        return torch.randperm(n, generator=g).to(self.images.device)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw examples to float32 model input (``normalise``)."""
        return _normalised(x, self.mean, self.std)

    def batch_rows(self, order: torch.Tensor, i: int) -> torch.Tensor:
        """This rank's rows of step ``i`` of an epoch in ``order``."""
        bs = self.global_batch_size
        return shard(order[i * bs:(i + 1) * bs], self.rank, self.world_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(epoch)
        gen = None
        if self.augment is not None and self.views is None:
            gen = torch.Generator(device=self.device)
            salt = ("augment", epoch) if self.rank == 0 else ("augment", epoch, "rank", self.rank)
            gen.manual_seed(derive_seed(self.seed, *salt))
        for x, targets, rows in self._cut(order):
            if self.views is not None:
                x = self.views.apply(x, rows, epoch)
            elif self.augment is not None:  # a modality's augmenter: draw, then apply
                x = self.augment(x, gen) if callable(self.augment) else \
                    self.augment.apply(x, self.augment.draw(x.shape[0], gen, x.device))
            yield self.normalise(x), targets

    def _cut(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The epoch's uint8 batches, their targets (on ``device``) and their rows."""
        if self.resident:
            for i in range(len(self)):
                rows = self.batch_rows(order, i)
                yield self.images[rows], self.targets[rows], rows
            return
        steps = [self.batch_rows(order, i) for i in range(len(self))]
        if self._loader is None:
            self._loader = DataLoader(
                _Rows(self.images, self.targets), sampler=self._sampler, batch_size=None,
                num_workers=self.workers, pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0, prefetch_factor=4 if self.workers > 0 else None,
            )
        self._sampler.steps = steps
        for rows, (x, targets) in zip(steps, self._loader, strict=True):
            yield x.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True), rows

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch 0; use ``epoch(e)`` in a training loop."""
        return self.epoch(0)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Raw examples to float32 model input: ``(x / 255 - mean) / std`` for uint8 pixels, ``(x - mean) / std``
    for float examples (feature vectors, waveforms), with one statistic per entry of dimension 1."""
    shape = (1, -1, *(1,) * (x.ndim - 2))
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).reshape(shape)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(shape)
    return _normalised(x, mean, std)


def _normalised(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``normalise`` with statistics already shaped for ``x``; a float input is never written to (a new tensor)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)
    return x.to(torch.float32).sub(mean).div_(std)


DEVICE_SHARE = 0.5  # of the device's free memory a set may take and still be held there


def resident(images: torch.Tensor, device: torch.device, placement: str) -> bool:
    """Whether a set is held on ``device`` (see ``Batches``)."""
    if placement not in ("auto", "device", "host"):
        raise ValueError(f"placement must be auto, device or host, got {placement!r}")
    if not isinstance(images, torch.Tensor):
        return False  # images read from files (PoolImages): DataLoader workers decode them on the host
    if placement != "auto":
        return placement == "device"
    if device.type != "cuda":
        return True  # host memory is the device's memory: nothing to gain from workers
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() <= DEVICE_SHARE * free


class _Rows(Dataset):
    """A whole batch per item: ``rows`` (a tensor of row numbers) in, uint8 images and targets out."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images, self.targets = images, targets

    def __getitem__(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[rows], self.targets[rows]


class _StepRows(Sampler):
    """The current epoch's row batches; set before each epoch (persistent workers keep running)."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)
