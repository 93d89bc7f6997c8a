"""Each model's own input pipeline: the size, channels, normalisation and class order it was trained with.

Why: a teacher trained outside mentor expects what its own script fed it (a
torchvision resnet: ImageNet's mean and std, often another size), and a
student may ship at another size or in grayscale. Feeding every model the
data's own normalisation scored such a teacher at 27% instead of 78%.

How: the data hands every model the same batch, in the data's form (its
channels and size, normalised with its statistics: ``Batches``). A model
whose pipeline is the data's own is used as it is, so nothing changes for
it, digit for digit. Any other model is wrapped in ``WithInput``: the raw
uint8 pixels are recovered exactly from the batch (the normalisation is
affine and the pixels are whole numbers), brought to the model's channels
and size by the pool's decoding rules (``mentor.data.pool``), normalised
with the model's statistics, and the model's outputs are put in the data's
class order. Teacher and student thus see the same raw examples and the same
augmentation draw, each as it expects them. What a model file ships with
(ONNX metadata, MLflow model metadata, ``preprocess.json``) is its own
pipeline's record (``record``), so ``mentor predict`` decodes files its way.

Where a pipeline comes from, first found wins: the experiment file
(``models.<key>.preprocess``); the model's pretrained weights (a model
component's ``preprocess`` function, e.g. torchvision's ``weights.transforms()``);
a mentor model's recorded ``mentor.preprocess`` (``uri``); else the data's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data.loader import Batches, normalise
from .data.pool import convert_batch
from .data.types import DataInfo
from .deploy.preprocess import Preprocess

NORMALISED = "(x - mean) / std per entry of an example's dimension 1"


class PipelineError(ValueError):
    """A model's pipeline does not fit the data (a class the model does not know, channels it cannot make)."""


@dataclass(frozen=True)
class ModelInput:
    """One model's input pipeline and output class order.

    ``classes``: the class each output column stands for, in the model's order;
    empty when it is the data's order. ``source`` says where the pipeline came from.
    """

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    source: str = "data"

    @classmethod
    def of_data(cls, info: DataInfo) -> ModelInput:
        """The data's own pipeline: what every model got before models had their own."""
        return cls(int(info.in_channels), tuple(int(s) for s in info.image_size),
                   tuple(float(m) for m in info.mean), tuple(float(s) for s in info.std))

    @classmethod
    def from_record(cls, record: Preprocess, source: str) -> ModelInput:
        """A pipeline from a shipped model's record (``mentor.preprocess``)."""
        return cls(record.channels, (record.height, record.width), tuple(record.mean), tuple(record.std),
                   tuple(record.class_names), source)

    def stated(self, fields: dict, source: str) -> ModelInput:
        """This pipeline with the fields an experiment file states (``image_size``, ``channels``, ``mean``,
        ``std``, ``classes``) replaced."""
        size = fields.get("image_size")
        channels = int(fields.get("channels") or self.channels)
        mean, std = fields.get("mean"), fields.get("std")
        if channels != self.channels:  # statistics of other channels: their average, one per channel
            mean = mean or (sum(self.mean) / len(self.mean),) * channels
            std = std or (sum(self.std) / len(self.std),) * channels
        return ModelInput(
            channels,
            self.size if size is None else ((size, size) if isinstance(size, int) else tuple(size)),
            tuple(float(m) for m in mean) if mean is not None else self.mean,
            tuple(float(s) for s in std) if std is not None else self.std,
            tuple(str(c) for c in fields.get("classes") or self.classes), source)

    def num_classes(self, info: DataInfo) -> int:
        """How many outputs the model has: its own class list, else the data's."""
        return len(self.classes) or info.num_classes

    def is_data_form(self, info: DataInfo) -> bool:
        """Whether the model takes the data's batches as they are (then it is not wrapped)."""
        return self.same_input(ModelInput.of_data(info)) and \
            (not self.classes or self.classes == tuple(info.class_names))

    def same_input(self, other: ModelInput) -> bool:
        return (self.channels, self.size, self.mean, self.std) == \
            (other.channels, other.size, other.mean, other.std)

    def class_index(self, info: DataInfo) -> torch.Tensor | None:
        """For each of the data's classes, the model's output column (None: the same order)."""
        if not self.classes or self.classes == tuple(info.class_names):
            return None
        if not info.class_names:
            raise PipelineError(f"the model names its classes ({_some(self.classes)}) but the data has no class "
                                "names to match them with")
        missing = [name for name in info.class_names if name not in self.classes]
        if missing:
            raise PipelineError(f"the data's class{'es' if len(missing) > 1 else ''} {_some(missing)} "
                                f"{'are' if len(missing) > 1 else 'is'} not among the model's "
                                f"{len(self.classes)} classes ({_some(self.classes)})")
        return torch.tensor([self.classes.index(name) for name in info.class_names])

    def record(self, info: DataInfo) -> Preprocess:
        """What a file of this model ships with: its input and its outputs' class names."""
        names = self.classes or tuple(str(c) for c in info.class_names)
        height, width = self.size if len(self.size) == 2 else (0, 0)
        if info.modality != "image":
            return Preprocess(channels=self.channels, height=height, width=width, mean=self.mean, std=self.std,
                              class_names=names, num_classes=self.num_classes(info), rules=NORMALISED,
                              modality=info.modality, details=dict(info.details))
        return Preprocess(channels=self.channels, height=height, width=width, mean=self.mean,
                          std=self.std, class_names=names, num_classes=self.num_classes(info))

    def params(self, key: str) -> dict[str, str]:
        """The MLflow params that record this pipeline on a run (``preprocess.<key>.*``)."""
        out = {"source": self.source, "channels": str(self.channels),
               "image_size": "x".join(map(str, self.size)) or "-", "mean": _numbers(self.mean),
               "std": _numbers(self.std)}
        if self.classes:
            out["classes"] = ",".join(self.classes)[:6000]
        return {f"preprocess.{key}.{name}": value for name, value in out.items()}

    def describe(self) -> str:
        size = "x".join(map(str, self.size))
        return (f"{self.channels} channel{'s' if self.channels > 1 else ''}, {size + ', ' if size else ''}"
                f"mean {_numbers(self.mean)}, std {_numbers(self.std)} ({self.source})")

    def from_raw(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` images (any channels and size) to this model's float input; another
        modality's examples (no image size) are normalised as they are."""
        if len(self.size) != 2:
            return normalise(images, self.mean, self.std)
        return normalise(convert_batch(images, self.channels, self.size), self.mean, self.std)


class ModelBatches(Batches):
    """``Batches`` in one model's own form: its input from the raw pixels, the labels in its class order
    (what a shipped model is checked and measured on)."""

    def __init__(self, data, batch_size: int, pipeline: ModelInput, info: DataInfo, **kwargs):
        super().__init__(data, batch_size, mean=info.mean, std=info.std, **kwargs)
        self.pipeline = pipeline
        index = pipeline.class_index(info)
        self.label_column = None if index is None else index.to(self.device)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return self.pipeline.from_raw(x)

    def epoch(self, epoch: int):
        for x, y in super().epoch(epoch):
            yield x, (y if self.label_column is None or not self.labeled else self.label_column[y])


def raw_pixels(x: torch.Tensor, info: DataInfo) -> torch.Tensor:
    """The uint8 pixels behind a batch in the data's form (``(pixels / 255 - mean) / std``): exact, as the
    pixels are whole numbers and float32 keeps them within far less than half a step."""
    mean = torch.tensor(info.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.float() * std + mean).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)


class WithInput(nn.Module):
    """A model behind its own pipeline: takes batches in the data's form, answers in the data's class order.

    Its weights are the model's own: ``state_dict`` and ``load_state_dict`` are
    the inner model's (no prefix), so checkpoints, kept weights and caches
    read and write the model itself. ``inner`` is the model as it ships.
    """

    def __init__(self, model: nn.Module, pipeline: ModelInput, data: DataInfo):
        super().__init__()
        self.inner = model
        self.pipeline = pipeline
        self.data = data
        index = pipeline.class_index(data)
        self.register_buffer("class_index", index, persistent=False)

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        """A data-form batch as this model expects it."""
        if x.dtype == torch.uint8:  # raw pixels (a cache build's views)
            return self.pipeline.from_raw(x)
        return self.pipeline.from_raw(raw_pixels(x, self.data))

    def adapt_output(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's outputs in the data's class order."""
        if self.class_index is None:
            return logits
        if logits.shape[-1] != len(self.pipeline.classes):
            raise PipelineError(f"the model outputs {logits.shape[-1]} classes but its preprocess.classes lists "
                                f"{len(self.pipeline.classes)}")
        return logits.index_select(-1, self.class_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapt_output(self.inner(self.adapt_input(x)))

    def state_dict(self, *args, **kwargs):
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.inner.load_state_dict(state_dict, strict=strict, assign=assign)


def bare(model: nn.Module) -> nn.Module:
    """The model as it ships: without torch.compile's or its pipeline's wrapper."""
    model = getattr(model, "_orig_mod", model)
    return model.inner if isinstance(model, WithInput) else model


def own_pipeline(model: nn.Module, info: DataInfo) -> dict | None:
    """The record of a model's own pipeline where it is not the data's (None): what keys its caches."""
    model = getattr(model, "_orig_mod", model)
    return model.pipeline.record(info).to_dict() if isinstance(model, WithInput) else None


def with_input(model: nn.Module, pipeline: ModelInput, info: DataInfo) -> nn.Module:
    """``model`` behind ``pipeline``, or itself where the pipeline is the data's."""
    return model if pipeline.is_data_form(info) else WithInput(model, pipeline, info)


def resolve_input(experiment, key: str, registry, info: DataInfo) -> ModelInput:
    """``models[key]``'s pipeline: the file's ``preprocess`` over its weights' transforms, or over the
    pipeline recorded with its ``uri`` model, or over the data's (see the module's docstring)."""
    spec = experiment.models[key]
    base, source = ModelInput.of_data(info), "data"
    implied = registry.get("model", spec.name).input_pipeline(**spec.params) if spec.name is not None else None
    if implied:
        base, source = base.stated(implied, "weights"), "weights"
    elif spec.uri is not None:
        from .tracking.models import logged_preprocess

        record = logged_preprocess(spec.uri, experiment.tracking.uri)
        if record is not None:
            base, source = ModelInput.from_record(Preprocess.from_dict(record), "uri"), "uri"
    if spec.preprocess is not None:
        base, source = base.stated(spec.preprocess.fields(), "experiment file"), "experiment file"
    return ModelInput(base.channels, base.size, base.mean, base.std, base.classes, source)


def _numbers(values) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def _some(names, n: int = 5) -> str:
    names = list(names)
    shown = ", ".join(repr(str(c)) for c in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
