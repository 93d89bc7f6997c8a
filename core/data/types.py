"""What a data source hands the core: images in memory with their metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class DataNotFound(Exception):
    """A dataset is not on disk or a file of it cannot be read; the message names the file or folder
    and says how to get or fix it."""


class DataInfoError(ValueError):
    """A data source described its data inconsistently (statistics on the wrong scale, wrong length)."""


@dataclass(frozen=True)
class DataInfo:
    """Facts about a dataset that models, normalisation and reports need.

    ``mean`` and ``std`` are per channel on the [0, 1] scale (pixel / 255), as
    torchvision's ``Normalize`` takes them: batches are ``(x / 255 - mean) / std``.
    ``image_size`` is (height, width).

    ``modality`` names the registered modality of the examples (``mentor.Modality``): ``image`` (uint8
    pixels as above) or a plugin's. For another modality ``in_channels`` is the size of an example's
    dimension 1 (a feature vector's length), ``image_size`` is ``()``, and ``mean`` and ``std`` are per
    entry of dimension 1 on the examples' own scale. ``details`` holds the facts a shipped model needs
    to read its inputs (a table's column names); they travel in its record (``mentor.preprocess``).
    """

    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    targets: str = "example"  # one class per example, or "token": one per token (labels [N, L], -100 not counted)
    modality: str = "image"
    details: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def noun(self) -> str:
        """What the examples are called on the terminal: ``images``, or ``examples`` for another modality."""
        return "images" if self.modality == "image" else "examples"

    def __post_init__(self):
        if self.targets not in ("example", "token"):
            raise DataInfoError(f"DataInfo.targets is {self.targets!r}: 'example' or 'token'")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.in_channels:
                raise DataInfoError(f"DataInfo.{name} has {len(values)} values for {self.in_channels} channels")
            if self.modality != "image":  # statistics on the examples' own scale
                if name == "std" and any(v <= 0 for v in values):
                    raise DataInfoError(f"DataInfo.std {tuple(values)} must be > 0")
                continue
            if any(not 0 <= v <= 1 for v in values) or (name == "std" and any(v <= 0 for v in values)):
                raise DataInfoError(f"DataInfo.{name} {tuple(values)} is not on the [0, 1] scale (pixel / 255)"
                                 + (" and > 0" if name == "std" else ""))


@dataclass
class ImageSet:
    """Examples with int64 labels ``[N]``: images as uint8 ``[N, C, H, W]``, or another modality's tensor
    ``[N, ...]`` (``ExampleSet``, the same class; the data's modality checks the form when the run loads it).

    Held as whole tensors so that batches are cut by indexing (and, on a GPU,
    augmented on the device) instead of decoded one sample at a time.
    ``index`` keeps each row's position in the source's original set, so
    splits and pseudo-label tables can always point back at a sample.
    """

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if isinstance(self.images, torch.Tensor) and self.images.ndim < 2:
            raise ValueError(f"examples must be [N, ...] with N rows, got {tuple(self.images.shape)}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be [N={len(self.images)}], got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()
        if self.index is None:
            self.index = torch.arange(len(self.images))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def examples(self) -> torch.Tensor:
        """The raw examples (``images`` by their older name)."""
        return self.images

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


ExampleSet = ImageSet  # the name for examples of any modality
