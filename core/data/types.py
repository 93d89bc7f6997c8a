"""What a data source hands the core: images in memory with their metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class DataNotFound(Exception):
    """A dataset is not on disk; the message says how to get it."""


@dataclass(frozen=True)
class DataInfo:
    """Facts about a dataset that models, normalisation and reports need."""

    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()


@dataclass
class ImageSet:
    """Images as uint8 ``[N, C, H, W]`` with int64 labels ``[N]``.

    Held as whole tensors so that batches are cut by indexing (and, on a GPU,
    augmented on the device) instead of decoded one sample at a time.
    ``index`` keeps each row's position in the source's original set, so
    splits and pseudo-label tables can always point back at a sample.
    """

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be [N={len(self.images)}], got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()
        if self.index is None:
            self.index = torch.arange(len(self.images))

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: torch.Tensor) -> ImageSet:
        rows = torch.as_tensor(rows, dtype=torch.long)
        take = getattr(self.images, "take_rows", None)  # images read from files stay unread (PoolImages)
        return ImageSet(take(rows) if take else self.images[rows], self.labels[rows], self.index[rows])


@dataclass
class DataBundle:
    """A data source's output: its train and test sets and their metadata."""

    train: ImageSet
    test: ImageSet
    info: DataInfo
