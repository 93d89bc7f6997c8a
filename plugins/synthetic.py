"""A data source of random images, for benchmarks and tests only.

Why: timing a training step does not depend on what the pixels show, and a
benchmark file should run on any machine without a download (CIFAR-100 is
not on every disk, and the GPU machines here have no network). The images
are uniform random uint8 with uniform random labels, drawn from ``seed``:
the same parameters give the same data everywhere. Nothing can be learned
from them; never report an accuracy measured on this source.
"""

from __future__ import annotations

import torch
from pydantic import Field

from mentor import DataBundle, DataInfo, ImageSet, Params, hookimpl

UNIFORM_MEAN = 0.5  # mean of U[0, 1]
UNIFORM_STD = 0.2887  # std of U[0, 1] (1 / sqrt(12))


class RandomImagesParams(Params):
    """The shape and size of the random sets."""

    train_size: int = Field(50_000, ge=1, description="training images")
    test_size: int = Field(1_000, ge=1, description="test images")
    num_classes: int = Field(100, ge=2, description="labels are uniform over this many classes")
    channels: int = Field(3, ge=1, description="image channels")
    image_size: int = Field(32, ge=1, description="images are image_size x image_size")
    seed: int = Field(0, description="the draw: same seed, same images")


def _random_set(n: int, channels: int, size: int, classes: int, generator: torch.Generator) -> ImageSet:
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return ImageSet(images, labels)


def random_images(train_size: int = 50_000, test_size: int = 1_000, num_classes: int = 100, channels: int = 3,
                  image_size: int = 32, seed: int = 0) -> DataBundle:
    """Random uint8 images with random labels, for benchmarks and tests only (nothing to learn)."""
    g = torch.Generator().manual_seed(seed)
    train = _random_set(train_size, channels, image_size, num_classes, g)
    test = _random_set(test_size, channels, image_size, num_classes, g)
    info = DataInfo(
        num_classes=num_classes,
        in_channels=channels,
        image_size=(image_size, image_size),
        mean=(UNIFORM_MEAN,) * channels,
        std=(UNIFORM_STD,) * channels,
        class_names=tuple(str(c) for c in range(num_classes)),
    )
    return DataBundle(train=train, test=test, info=info)


@hookimpl
def register_data_sources(register):
    register("random_images", random_images, params=RandomImagesParams,
             description="random uint8 images and labels of a given shape, seeded: for benchmarks and tests only")
