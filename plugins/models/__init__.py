"""Built-in model architectures, registered through ``register_models``.

Families (one module each): CIFAR ResNets and Wide ResNets and VGGs as in the
RepDistiller benchmarks, small CNNs for CPU experiments, and any torchvision
classification model by name. Every factory has the signature
``factory(num_classes, in_channels, **params)`` and returns a module whose
``forward`` gives logits ``[batch, num_classes]``.
"""

from __future__ import annotations

from mentor import hookimpl

from . import cifar_resnet, small_cnn, vgg, wrn
from .cifar_resnet import ResNetParams
from .small_cnn import CNN5Params, SmallCNNParams
from .torchvision_models import TorchvisionParams, torchvision_model, torchvision_preprocess
from .vgg import VGGParams
from .wrn import WideResNetParams

__all__ = [
    "CNN5Params", "ResNetParams", "SmallCNNParams", "TorchvisionParams", "VGGParams",
    "WideResNetParams", "register_models",
]


def _first_line(fn) -> str:
    return (fn.__doc__ or "").strip().splitlines()[0]


@hookimpl
def register_models(register):
    """Register the built-in architectures."""
    families = (
        (cifar_resnet.FACTORIES, ResNetParams),
        (wrn.FACTORIES, WideResNetParams),
        (vgg.FACTORIES, VGGParams),
    )
    for factories, params in families:
        for name, factory in factories.items():
            register(name, factory, params=params, description=_first_line(factory))
    register("small_cnn", small_cnn.small_cnn, params=SmallCNNParams,
             description=_first_line(small_cnn.small_cnn))
    register("cnn5", small_cnn.cnn5, params=CNN5Params,
             description=_first_line(small_cnn.cnn5))
    register("torchvision", torchvision_model, params=TorchvisionParams,
             description=_first_line(torchvision_model), preprocess=torchvision_preprocess)
