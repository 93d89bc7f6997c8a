"""Built-in data sources: torchvision's classic image sets and a folder of images.

Every source loads its whole train and test split into memory as uint8
``ImageSet``s; the core cuts validation / labeled / unlabeled splits from the
train set. Nothing here touches the network unless ``download: true`` is set,
and torchvision is only imported when a source is actually built, so loading
this plugin is cheap.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import Field

from mentor import DataBundle, DataInfo, DataNotFound, FilePath, ImageSet, Params, hookimpl

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_ROOT = "~/.cache/mentor/data"
FASHION_MNIST_ENV = "MENTOR_FASHION_MNIST_DIR"
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class TorchvisionParams(Params):
    """Where a torchvision dataset lives, and whether it may be downloaded."""

    root: str = Field(DEFAULT_ROOT, description="directory holding the dataset (~ is expanded)")
    download: bool = Field(False, description="download the dataset into root if it is missing")


class ImageFolderParams(Params):
    """A directory with ``train/`` and ``test/`` subfolders in ImageFolder layout."""

    root: FilePath = Field(description="directory with train/<class>/*.png and test/<class>/*.png (relative: from "
                           "the experiment file's folder)")
    image_size: int = Field(32, ge=1, description="images are resized to image_size x image_size")
    grayscale: bool = Field(False, description="load images as one channel instead of RGB")


@dataclass(frozen=True)
class _Spec:
    """What mentor knows about one torchvision dataset."""

    title: str  # as people write it, for messages
    cls_name: str  # the torchvision.datasets class
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size_hint: str  # download size, for messages
    layout: str  # of the dataset's ``.data``: "NHW" (MNIST family), "NHWC" (CIFAR), "NCHW" (SVHN)
    split_kw: bool = False  # SVHN takes split="train"/"test" instead of train=True/False


SPECS = {
    "fashion_mnist": _Spec("Fashion-MNIST", "FashionMNIST", (0.2860,), (0.3530,), "30 MB", "NHW"),
    "mnist": _Spec("MNIST", "MNIST", (0.1307,), (0.3081,), "12 MB", "NHW"),
    "cifar10": _Spec(
        "CIFAR-10", "CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "170 MB",
        "NHWC",
    ),
    "cifar100": _Spec(
        "CIFAR-100", "CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "170 MB",
        "NHWC",
    ),
    "svhn": _Spec(
        "SVHN", "SVHN", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "180 MB",
        "NCHW", split_kw=True,
    ),
}


# --- torchvision datasets -----------------------------------------------------


def _to_image_set(ds, layout: str) -> ImageSet:
    """A loaded torchvision dataset as an in-memory uint8 [N, C, H, W] ImageSet."""
    data = ds.data
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels  # SVHN
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if layout == "NHW":
        data = data.unsqueeze(1)
    elif layout == "NHWC":
        data = data.permute(0, 3, 1, 2)
    return ImageSet(data.to(torch.uint8).contiguous(), labels)


def _class_names(spec: _Spec, ds) -> tuple[str, ...]:
    if spec.cls_name == "SVHN":
        return tuple(str(i) for i in range(10))
    return tuple(str(c) for c in ds.classes)


def _bundle(spec: _Spec, train: ImageSet, test: ImageSet, classes: tuple[str, ...]) -> DataBundle:
    info = DataInfo(
        num_classes=len(classes),
        in_channels=int(train.images.shape[1]),
        image_size=(int(train.images.shape[2]), int(train.images.shape[3])),
        mean=spec.mean,
        std=spec.std,
        class_names=classes,
    )
    return DataBundle(train=train, test=test, info=info)


def _not_found_message(spec: _Spec, root: Path) -> str:
    msg = (
        f"{spec.title} not found under {root}. Set params.download: true to download it "
        f"(about {spec.size_hint}), or set params.root to where it is"
    )
    if spec.cls_name == "FashionMNIST":
        msg += f" (looked in {_fashion_mnist_system_dir()} too){_debian_hint()}"
    return msg + "."


def _open_torchvision(spec: _Spec, root: Path, download: bool):
    """Both splits of a torchvision dataset, or DataNotFound saying how to get it."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.cls_name)

    def load(split: str, dl: bool):
        if spec.split_kw:
            return cls(str(root), split=split, download=dl)
        return cls(str(root), train=(split == "train"), download=dl)

    try:
        return load("train", False), load("test", False)
    except RuntimeError as e:
        if "not found" not in str(e).lower():
            raise
        if not download:
            raise DataNotFound(_not_found_message(spec, root)) from None
    existed = {d for d in (*root.rglob("*"), root, *root.parents) if d.is_dir()}
    try:
        return load("train", True), load("test", True)
    except ImportError:  # SVHN needs scipy: not a download problem
        raise
    except Exception as e:  # network, HTTP, checksum, archive errors: all mean "no data"
        _remove_empty_dirs(root, existed)
        cause = " ".join(str(e).split()) or type(e).__name__
        if len(cause) > 400:
            cause = cause[:400] + "..."
        offline = _debian_hint() if spec.cls_name == "FashionMNIST" else ""
        raise DataNotFound(
            f"{spec.title} not found under {root} and downloading it failed: {cause}. "
            "Check the network connection (or proxy settings), or copy the dataset into "
            f"params.root by hand{offline}."
        ) from e


def _remove_empty_dirs(root: Path, existed: set[Path]) -> None:
    """Undo the folders a failed download made (torchvision makes root/<Name>/raw first), if empty."""
    made = sorted((d for d in root.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True)
    for d in [*made, root, *root.parents]:  # deepest first
        if d not in existed and d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _debian_hint() -> str:
    return (f"; without a network, `apt-get install dataset-fashion-mnist` puts it in "
            f"{FASHION_MNIST_SYSTEM_DIR}, or set {FASHION_MNIST_ENV} to a folder holding "
            "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz")


def _torchvision_source(name: str, root: str, download: bool) -> DataBundle:
    spec = SPECS[name]
    path = Path(root).expanduser()
    train_ds, test_ds = _open_torchvision(spec, path, download)
    train, test = _to_image_set(train_ds, spec.layout), _to_image_set(test_ds, spec.layout)
    return _bundle(spec, train, test, _class_names(spec, train_ds))


# --- Fashion-MNIST from the Debian package -------------------------------------


def _fashion_mnist_system_dir() -> Path:
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_SYSTEM_DIR).expanduser()


def read_idx(path: Path) -> torch.Tensor:
    """An idx file (MNIST format, uint8 data, optionally gzip-compressed) as a tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: only uint8 idx files are supported (type code {raw[2]:#x})")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, "
                         f"found {len(raw) - offset}")
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)
    return torch.from_numpy(data.copy())


def _find_idx(directory: Path) -> dict[str, tuple[Path, Path]] | None:
    """The four idx files in ``directory`` (plain or .gz), or None if any is missing."""
    found = {}
    for split, names in IDX_FILES.items():
        paths = []
        for name in names:
            for candidate in (directory / name, directory / f"{name}.gz"):
                if candidate.is_file():
                    paths.append(candidate)
                    break
            else:
                return None
        found[split] = tuple(paths)
    return found


def _idx_image_set(images: Path, labels: Path) -> ImageSet:
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            f"{images} / {labels}: unexpected shapes {tuple(x.shape)}, {tuple(y.shape)}"
        )
    return ImageSet(x.unsqueeze(1).contiguous(), y.long())


def fashion_mnist(root: str = DEFAULT_ROOT, download: bool = False) -> DataBundle:
    """Fashion-MNIST: 28x28 grayscale clothing, 10 classes, 60k train / 10k test.

    Looked for, in order: torchvision's layout under ``root``
    (``root/FashionMNIST/raw/``); the idx .gz files of the Debian package
    dataset-fashion-mnist (``$MENTOR_FASHION_MNIST_DIR`` or
    /usr/share/datasets/fashion-mnist); a download into ``root`` if
    ``download`` is true. The first two never touch the network.
    """
    spec = SPECS["fashion_mnist"]
    path = Path(root).expanduser()
    for directory in (path / "FashionMNIST" / "raw", _fashion_mnist_system_dir()):
        files = _find_idx(directory)
        if files is not None:
            from torchvision.datasets import FashionMNIST

            train = _idx_image_set(*files["train"])
            test = _idx_image_set(*files["test"])
            return _bundle(spec, train, test, tuple(FashionMNIST.classes))
    # torchvision's own checks (legacy processed/ files), then the download if allowed
    return _torchvision_source("fashion_mnist", root, download)


def mnist(root: str = DEFAULT_ROOT, download: bool = False) -> DataBundle:
    """MNIST: 28x28 grayscale digits, 10 classes, 60k train / 10k test."""
    return _torchvision_source("mnist", root, download)


def cifar10(root: str = DEFAULT_ROOT, download: bool = False) -> DataBundle:
    """CIFAR-10: 32x32 colour images, 10 classes, 50k train / 10k test."""
    return _torchvision_source("cifar10", root, download)


def cifar100(root: str = DEFAULT_ROOT, download: bool = False) -> DataBundle:
    """CIFAR-100: 32x32 colour images, 100 classes, 50k train / 10k test."""
    return _torchvision_source("cifar100", root, download)


def svhn(root: str = DEFAULT_ROOT, download: bool = False) -> DataBundle:
    """SVHN: 32x32 colour house-number digits, 10 classes, 73k train / 26k test (needs scipy)."""
    return _torchvision_source("svhn", root, download)


# --- a folder of images ---------------------------------------------------------


def _load_images(samples: list[tuple[str, int]], image_size: int, grayscale: bool) -> ImageSet:
    from PIL import Image
    from torchvision.transforms.v2 import functional as tvf

    channels = 1 if grayscale else 3
    images = torch.empty((len(samples), channels, image_size, image_size), dtype=torch.uint8)
    labels = torch.empty(len(samples), dtype=torch.long)
    for i, (file, target) in enumerate(samples):
        try:
            with Image.open(file) as img:
                arr = np.asarray(img.convert("L" if grayscale else "RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            # PIL's own messages ("image file is truncated", "exceeds limit of ... pixels") name no file
            raise DataNotFound(f"{file}: not a readable image ({type(exc).__name__}: {exc}); "
                               "replace or remove it") from None
        t = torch.from_numpy(arr.copy())
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        images[i] = tvf.resize(t, [image_size, image_size], antialias=True)
        labels[i] = target
    return ImageSet(images, labels)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std (population) of uint8 images, in [0, 1] scale.

    A channel with no spread (every pixel equal) gets std 1: normalising it then only centres it,
    where dividing by its std of 0 would make every input infinite."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def image_folder(root: str, image_size: int = 32, grayscale: bool = False) -> DataBundle:
    """Images in class folders: ``root/train/<class>/*`` and ``root/test/<class>/*``.

    Each image is resized to ``image_size`` x ``image_size`` (aspect ratio is
    not kept) and held in memory as uint8; classes are the sorted folder names
    of ``train/``; mean/std are computed from the train images.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    base = Path(root).expanduser()
    layout = (
        "Expected the layout root/train/<class>/<image> and root/test/<class>/<image> "
        "(the test folders use the same class names as train)."
    )
    if not base.is_dir():
        raise DataNotFound(f"image folder {base} does not exist. {layout}")
    for split in ("train", "test"):
        if not (base / split).is_dir():
            raise DataNotFound(f"image folder {base} has no {split}/ subfolder. {layout}")
    try:
        train_folder = ImageFolder(str(base / "train"))
    except FileNotFoundError as e:
        raise DataNotFound(f"no images found in {base / 'train'}: {e}. {layout}") from e
    classes, class_to_idx = train_folder.classes, train_folder.class_to_idx
    test_classes = sorted(p.name for p in (base / "test").iterdir() if p.is_dir())
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise DataNotFound(f"{base / 'test'} has classes that train/ lacks: {unknown}. {layout}")
    test_samples = make_dataset(str(base / "test"), class_to_idx, extensions=IMG_EXTENSIONS,
                                allow_empty=True)
    if not test_samples:
        raise DataNotFound(f"no images found in {base / 'test'}. {layout}")
    train = _load_images(train_folder.samples, image_size, grayscale)
    test = _load_images(test_samples, image_size, grayscale)
    mean, std = channel_stats(train.images)
    info = DataInfo(
        num_classes=len(classes),
        in_channels=int(train.images.shape[1]),
        image_size=(image_size, image_size),
        mean=mean,
        std=std,
        class_names=tuple(classes),
    )
    return DataBundle(train=train, test=test, info=info)


# --- registration ----------------------------------------------------------------


SOURCES: dict[str, Callable[..., DataBundle]] = {
    "fashion_mnist": fashion_mnist,
    "mnist": mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "svhn": svhn,
}


@hookimpl
def register_data_sources(register):
    for name, factory in SOURCES.items():
        register(name, factory, params=TorchvisionParams,
                 description=(factory.__doc__ or "").splitlines()[0])
    register("image_folder", image_folder, params=ImageFolderParams,
             description="your own images: root/train/<class>/* and root/test/<class>/*")
