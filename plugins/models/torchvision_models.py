"""Any torchvision classification model, by name, optionally pretrained.

Why: ImageNet architectures (and their pretrained weights) are the strongest
teachers one can get without training one, and the quickest way to try a new
student family. This component wraps ``torchvision.models.get_model`` and adapts
the result to the data:

* classes: without weights the model is built with ``num_classes`` directly;
  with weights it is built as published and, if the data has another number of
  classes, its classifier head (the last linear or 1x1-conv layer producing the
  weights' class count) is replaced by a freshly initialised one, marked with
  ``mentor.mark_untrained`` (fine for a model a stage trains; refused as a teacher);
* a failed download (no internet) names the file to place in torch.hub's cache;
* channels: if the data is not RGB, the first ``nn.Conv2d`` (in module order)
  is rebuilt with ``in_channels`` inputs and otherwise the same hyper-parameters
  (see ``adapt_first_conv`` for how its weights are set).

Small inputs: most ImageNet nets downsample 32x, so on 28x28 or 32x32 images
they run on 32x32 images (adaptive pooling over a 1x1 map) and most on 28x28,
but convnext and densenet need at least 32x32, inception_v3 at least 75x75,
ViTs an ``image_size`` in ``kwargs`` and maxvit_t an ``input_size``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torchvision
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from mentor import CheckpointError, Params, mark_untrained, unknown_name_message


def classification_models() -> list[str]:
    """The names torchvision's classification model builders are registered under."""
    return torchvision.models.list_models(module=torchvision.models)


def _weights_enum(arch: str):
    return torchvision.models.get_model_weights(arch)


class TorchvisionParams(Params):
    """``torchvision``: a torchvision classification model by name, optionally pretrained."""

    arch: str = Field(description="a torchvision classification model name, e.g. resnet18")
    weights: str | None = Field(
        None, description="a weights name of that model, e.g. DEFAULT or IMAGENET1K_V1; "
        "None = random initialisation")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for the model builder")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        known = classification_models()
        if arch not in known:
            raise ValueError(unknown_name_message("torchvision model", arch, known))
        return arch

    @field_validator("kwargs")
    @classmethod
    def _no_reserved_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        if "num_classes" in kwargs:
            raise ValueError("num_classes comes from the data; remove it from kwargs")
        if "weights" in kwargs:
            raise ValueError("give the weights as the 'weights' parameter, not in kwargs")
        if kwargs.get("aux_logits"):
            raise ValueError("aux_logits=True makes the model return a tuple while training; "
                             "mentor needs plain logits")
        return kwargs

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, weights: str | None, info: ValidationInfo) -> str | None:
        arch = info.data.get("arch")  # absent when the arch itself was invalid
        if weights is None or arch is None:
            return weights
        enum = _weights_enum(arch)
        prefix, dot, member = weights.rpartition(".")
        name = member if dot and prefix == enum.__name__ else weights
        known = list(enum.__members__)
        if name not in known:
            raise ValueError(unknown_name_message(f"weights for {arch}", weights, known))
        return name


def _replace(model: nn.Module, qualified_name: str, new: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _conv_like(conv: nn.Conv2d, in_channels: int | None = None,
               out_channels: int | None = None) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels if in_channels is not None else conv.in_channels,
        out_channels if out_channels is not None else conv.out_channels,
        kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)


def adapt_first_conv(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Rebuild the first ``nn.Conv2d`` of ``model`` for ``in_channels`` inputs, in place.

    Pretrained: each new input channel gets the RGB filters' mean, scaled by
    ``3 / in_channels``, so a gray image replicated over the new channels gives
    the response the RGB filters gave to the same gray image in RGB (for one
    channel this is the sum of the RGB filters).

    Random: fresh weights, normal with the replaced weights' standard deviation
    times ``sqrt(3 / in_channels)``, which keeps the output variance of the
    model's own initialisation (fan-in shrinks from 3k^2 to in_channels k^2).
    """
    name, conv = next(
        ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d to adapt to {in_channels} "
                         "input channels")
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ValueError(f"cannot adapt the grouped first convolution '{name}' to "
                         f"{in_channels} input channels")
    new = _conv_like(conv, in_channels=in_channels)
    old = conv.weight.detach()
    with torch.no_grad():
        if pretrained:
            mean = old.mean(dim=1, keepdim=True)
            new.weight.copy_(mean.expand(-1, in_channels, -1, -1) * (old.shape[1] / in_channels))
        else:
            std = float(old.std()) * math.sqrt(old.shape[1] / in_channels)
            new.weight.normal_(0.0, std)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach())
    _replace(model, name, new)


def replace_head(model: nn.Module, old_classes: int, num_classes: int) -> str:
    """Swap the classifier head (the last linear or conv layer with ``old_classes`` outputs)."""
    head = None
    for name, m in model.named_modules():
        outputs = m.out_features if isinstance(m, nn.Linear) else (
            m.out_channels if isinstance(m, nn.Conv2d) else None)
        if outputs == old_classes:
            head = name, m
    if head is None:
        raise ValueError(f"found no classifier head with {old_classes} outputs in "
                         f"{type(model).__name__}")
    name, m = head
    if isinstance(m, nn.Linear):
        new = nn.Linear(m.in_features, num_classes, bias=m.bias is not None)
        new = new.to(device=m.weight.device, dtype=m.weight.dtype)
    else:
        new = _conv_like(m, out_channels=num_classes)
    _replace(model, name, new)
    return name


def weights_file(enum_member) -> str:
    """Where torch.hub keeps (and first looks for) a weights file: $TORCH_HOME/hub/checkpoints/<file>."""
    import os
    from urllib.parse import urlparse

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(enum_member.url).path))


def _pretrained(arch: str, enum_member, kwargs: dict[str, Any]) -> nn.Module:
    """The model with its published weights; a failed download says where to place the file by hand."""
    try:
        return torchvision.models.get_model(arch, weights=enum_member, **kwargs)
    except OSError as exc:  # URLError (no network) is an OSError
        raise CheckpointError(
            f"cannot download {enum_member} from {enum_member.url} ({type(exc).__name__}: {exc}); without "
            f"internet, place that file at {weights_file(enum_member)} (torch.hub's cache: TORCH_HOME/hub/"
            "checkpoints, TORCH_HOME defaults to ~/.cache/torch)") from None


def drop_aux_heads(model: nn.Module) -> None:
    """Switch off googlenet's / inception_v3's auxiliary classifiers, in place.

    With them on, ``forward`` returns a named tuple while training; mentor needs
    plain logits. (Their builders insist on ``aux_logits=True`` when loading
    weights, so this is done after building.)
    """
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if getattr(model, name, None) is not None:
                setattr(model, name, None)


def torchvision_preprocess(arch: str, weights: str | None = None, kwargs: dict[str, Any] | None = None) -> dict | None:
    """With pretrained weights, the input they were trained with (``weights.transforms()``: its crop size,
    RGB, ImageNet's mean and std) is the model's own pipeline; without, the data's."""
    if weights is None:
        return None
    transforms = _weights_enum(arch)[weights].transforms()
    return {"image_size": int(transforms.crop_size[0]), "channels": 3,
            "mean": [float(m) for m in transforms.mean], "std": [float(s) for s in transforms.std]}


def torchvision_model(num_classes: int, in_channels: int, arch: str, weights: str | None = None,
                      kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Any torchvision classification model, adapted to the data's classes and channels."""
    kwargs = dict(kwargs or {})
    if weights is None:
        if arch in ("googlenet", "inception_v3"):
            kwargs.setdefault("aux_logits", False)  # do not even build the auxiliary heads
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
        drop_aux_heads(model)
    else:
        kwargs.pop("aux_logits", None)  # the builders require it True with weights
        enum_member = _weights_enum(arch)[weights]
        model = _pretrained(arch, enum_member, kwargs)
        drop_aux_heads(model)
        old_classes = len(enum_member.meta["categories"])
        if old_classes != num_classes:
            head = replace_head(model, old_classes, num_classes)
            mark_untrained(model, head, f"{weights} has {old_classes} classes, the data {num_classes}")
    if in_channels != 3:
        if getattr(model, "transform_input", False):
            model.transform_input = False  # it re-normalises exactly three RGB channels
        adapt_first_conv(model, in_channels, pretrained=weights is not None)
    return model
