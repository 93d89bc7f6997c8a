"""Two data sources: labeled images from an .npz file, unlabeled image files matching a glob."""

from pathlib import Path

import numpy as np
import torch
from pydantic import Field

import mentor
from mentor import FilePath, Params, hookimpl

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


class NpzParams(Params):
    path: FilePath = Field(description="an .npz with x_train, y_train, x_test, y_test (images uint8 "
                           "[N, H, W] or [N, H, W, C])")


def _images(array: np.ndarray, name: str, path: Path) -> torch.Tensor:
    if array.dtype != np.uint8 or array.ndim not in (3, 4):
        raise mentor.DataNotFound(f"{path}: {name} must be uint8 [N, H, W] or [N, H, W, C], "
                                  f"got {array.dtype} {array.shape}")
    images = torch.from_numpy(np.ascontiguousarray(array))
    return images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()


def npz_images(path: str) -> mentor.DataBundle:
    path = Path(path)
    if not path.is_file():
        raise mentor.DataNotFound(f"no .npz file at {path}")
    with np.load(path, allow_pickle=False) as arrays:  # data, never code
        missing = [name for name in ARRAYS if name not in arrays]
        if missing:
            raise mentor.DataNotFound(f"{path} lacks the arrays {missing} (has {sorted(arrays)})")
        train = mentor.ImageSet(_images(arrays["x_train"], "x_train", path), torch.from_numpy(arrays["y_train"]))
        test = mentor.ImageSet(_images(arrays["x_test"], "x_test", path), torch.from_numpy(arrays["y_test"]))
    pixels = train.images.double().div(255)
    classes = int(max(train.labels.max(), test.labels.max())) + 1
    info = mentor.DataInfo(
        num_classes=classes,
        in_channels=train.images.shape[1],
        image_size=tuple(train.images.shape[2:]),
        mean=tuple(pixels.mean(dim=(0, 2, 3)).tolist()),  # [0, 1] scale, per channel
        std=tuple(pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()),
        class_names=tuple(str(c) for c in range(classes)),
    )
    return mentor.DataBundle(train=train, test=test, info=info)


class GlobParams(Params):
    root: FilePath = Field(description="the folder searched")
    pattern: str = Field(default="**/*.png", description="a glob below root")


def glob_pool(root: str, pattern: str = "**/*.png") -> mentor.ImagePool:
    files = sorted(str(p) for p in Path(root).glob(pattern) if p.suffix.lower() in mentor.IMAGE_EXTENSIONS)
    if not files:
        raise mentor.DataNotFound(f"no image files match {pattern!r} under {root}")
    return mentor.ImagePool(files)  # decoded on demand, batch by batch: the pool may exceed memory


@hookimpl
def register_data_sources(register):
    register("npz", npz_images, params=NpzParams, description="labeled images from a numpy .npz file")


@hookimpl
def register_unlabeled_sources(register):
    register("glob", glob_pool, params=GlobParams, description="unlabeled image files matching a glob pattern")
