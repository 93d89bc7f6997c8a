"""Modalities: what one kind of example is, from a source's tensor to a shipped model's input.

Why: KD, pseudo-labelling, the teacher cache, export and the report do not
care what an example is; only a few steps do. A modality names those steps,
and a plugin registers one (``register_modalities``) the way it registers a
model. ``image`` is the first and is built in; a data source says which
modality its examples are (``DataInfo.modality``).

What a modality decides, and where the core asks it:

* ``check(examples, info)``: a source's examples are what the modality holds
  (images: uint8 ``[N, C, H, W]`` of the stated channels and size), checked
  before anything trains and located at ``data.source``.
* normalisation: the loader turns raw examples into a model's input as
  ``(x / 255 - mean) / std`` for integer pixels, ``(x - mean) / std`` for
  float examples (``mentor.Batches``), statistics broadcast over dimension 1.
* ``augmenter(cfg)``: the training batches' augmentation, as a *draw* of
  random parameters and an *apply* that uses them and draws nothing (so the
  teacher cache can record the draws and rebuild the very view a student sees).
* ``input_name``: the ONNX input's name (``images``, ``features``).
* ``predict_batches(sources, record, batch_size)``: what ``mentor predict``
  reads (files, columns) and how, in the shipped model's recorded form.
* ``DataInfo.details``: the facts a shipped model needs to read its inputs
  (a table's column names) go into its record (``mentor.preprocess``) as they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .data.augment import BatchAugment
from .data.strong_augment import StrongAugment
from .data.types import DataInfo
from .deploy.predict_inputs import PredictBatch


class Modality:
    """One kind of example. Subclass it, set ``input_name``, override what differs, and register the
    class with ``register_modalities`` (``register(name, factory)``; the factory takes no arguments).

    The defaults are for float examples ``[N, ...]`` without augmentation."""

    input_name: str = "inputs"

    def check(self, examples: torch.Tensor, info: DataInfo) -> str | None:
        """What is wrong with a source's examples (its train or test tensor), or None."""
        if not isinstance(examples, torch.Tensor) or examples.ndim < 2 or not examples.is_floating_point():
            shape = tuple(examples.shape) if isinstance(examples, torch.Tensor) else type(examples).__name__
            return f"examples must be a float tensor [N, ...], got {getattr(examples, 'dtype', '')} {shape}"
        if examples.shape[1] != info.in_channels:
            return f"examples have {examples.shape[1]} values in dimension 1, DataInfo.in_channels says " \
                f"{info.in_channels}"
        return None

    def augmenter(self, cfg, info: DataInfo):
        """The augmentation ``cfg`` (a ``mentor.AugmentConfig``) asks for, on data described by ``info``: an
        object with ``draw(n, generator, device)`` returning a ``mentor.AugmentDraw`` (a subclass with this
        modality's tensors) and ``apply(x, draw)`` on raw examples (see ``mentor.BatchAugment``), or None
        for none. Raise ValueError for a setting this modality has no meaning for; the run reports it at
        the file's line before anything trains."""
        if cfg is not None and (cfg.crop_padding or cfg.flip or cfg.randaugment is not None):
            raise ValueError(f"{type(self).__name__} examples have no crop, flip or RandAugment: leave augment out")
        return None

    def consistency_views(self, cfg, strong, info: DataInfo):
        """The two views a consistency method (FixMatch, MPL, Mean Teacher) makes of an unlabeled batch, each
        called as ``view(x, generator)``: the weak one from ``cfg`` (the stage's augmentation), the strong one
        from ``strong`` (its ``num_ops`` and ``magnitude``, as a RandAugment setting for ``augmenter``), or
        the weak one again when ``strong`` is None (Mean Teacher)."""
        from .config.schema import AugmentConfig

        weak_cfg = cfg.model_copy(update={"randaugment": None}) if cfg is not None else None
        weak = _called(self.augmenter(weak_cfg, info))
        if strong is None:
            return weak, weak
        strong_cfg = AugmentConfig.model_validate({"randaugment": {"num_ops": strong.num_ops,
                                                                   "magnitude": strong.magnitude}})
        return weak, _called(self.augmenter(strong_cfg, info))

    def predict_batches(self, sources: Sequence[str], record, batch_size: int) -> Iterator[PredictBatch]:
        """``mentor predict``'s inputs as raw examples in batches, read in the shipped model's recorded form
        (``record``, a ``mentor.preprocess`` record with the source's ``details``)."""
        raise NotImplementedError(f"the {type(self).__name__} modality does not say what mentor predict reads")


class ImageModality(Modality):
    """Images: uint8 ``[N, C, H, W]``; crop, flip and RandAugment; image files for predict."""

    input_name = "images"

    def check(self, examples, info: DataInfo) -> str | None:
        if not isinstance(examples, torch.Tensor):
            return None  # images read from files on demand (a pool): decoded to the data's form
        if examples.dtype != torch.uint8 or examples.ndim != 4:
            return f"images must be uint8 [N, C, H, W], got {examples.dtype} {tuple(examples.shape)}"
        found = (int(examples.shape[1]), tuple(int(s) for s in examples.shape[2:]))
        stated = (int(info.in_channels), tuple(int(s) for s in info.image_size))
        if len(examples) and found != stated:
            return f"images are {found[0]}x{found[1][0]}x{found[1][1]} (channels x height x width), DataInfo " \
                f"says {stated[0]}x{'x'.join(map(str, stated[1]))}"
        return None

    def augmenter(self, cfg, info: DataInfo) -> BatchAugment | None:
        if cfg is None:
            return None
        strong = (cfg.randaugment.num_ops, cfg.randaugment.magnitude) if cfg.randaugment else None
        return BatchAugment(cfg.crop_padding, cfg.flip, strong)

    def consistency_views(self, cfg, strong, info: DataInfo):
        """Weak: crop and flip; strong: crop and flip, then RandAugment and Cutout (``StrongAugment``)."""
        weak = BatchAugment(cfg.crop_padding, cfg.flip)
        if strong is None:
            return weak, weak
        return weak, StrongAugment(strong.num_ops, strong.magnitude, strong.cutout, cfg.crop_padding, cfg.flip)

    def predict_batches(self, sources, record, batch_size: int, *, workers: int = 2) -> Iterator[PredictBatch]:
        """Image files, folders, glob patterns and .parquet/.csv lists of paths, decoded as an unlabeled pool is."""
        from .deploy.predict import image_batches

        return image_batches(sources, record, batch_size, workers=workers)


class _Called:
    """A modality's augmenter (draw, then apply) called as ``view(x, generator)``."""

    active = True

    def __init__(self, augmenter):
        self.augmenter = augmenter

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.augmenter.apply(x, self.augmenter.draw(x.shape[0], generator, x.device))


def _called(augmenter):
    """``augmenter`` as a view (None: no change)."""
    return BatchAugment() if augmenter is None else _Called(augmenter)


IMAGE = "image"


def modality_of(registry, info: DataInfo) -> Modality:
    """The registered modality of ``info`` (``DataInfo.modality``), built."""
    return registry.get("modality", info.modality).factory()
