"""Unlabeled images as files on disk, decoded on demand so a pool may outgrow memory.

Decoding rules (one place, so every pool source agrees):

* channels: a colour image becomes grayscale by the ITU-R 601 luma weights
  (0.299 R + 0.587 G + 0.114 B); a grayscale image becomes RGB by repeating its
  channel; an alpha channel is dropped.
* size: the shorter side is resized (bilinear, antialiased) so the image covers
  the target height x width, then the centre is cropped: the aspect ratio is
  kept and nothing is stretched.
* uint8 ``[C, H, W]``, like ``ImageSet`` images.

A file that cannot be decoded is skipped, never fatal: batches carry its path
and error, and ``ImagePool.batches`` callers collect them.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_image(path: str) -> torch.Tensor:
    """uint8 [C, H, W] from torchvision.io, or from Pillow for formats it cannot decode."""
    try:
        from torchvision.io import ImageReadMode, decode_image, read_file

        image = decode_image(read_file(path), mode=ImageReadMode.UNCHANGED)
    except Exception:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            im.seek(0)
            gray = im.mode in ("1", "L", "I", "I;16", "F")
            im = im.convert("L" if gray else ("RGBA" if "A" in im.getbands() else "RGB"))
            array = np.asarray(im, dtype=np.uint8)
        image = torch.from_numpy(array.copy())
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
    if image.ndim == 4:  # an animated GIF: its first frame
        image = image[0]
    return image


def convert(image: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """``image`` (uint8 [C, H, W]) in ``channels`` and ``size`` by the module's rules."""
    return convert_batch(image[None], channels, size)[0]


def convert_batch(images: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` in ``channels`` and ``size`` by the module's rules (a model's own input
    pipeline applies them to the data's batches: ``mentor.model_input``)."""
    if images.shape[1] in (2, 4):  # drop alpha
        images = images[:, :-1]
    if channels == 1 and images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
        images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif channels == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != channels:
        raise ValueError(f"cannot convert {images.shape[1]} channels to {channels}")
    height, width = size
    h, w = images.shape[2:]
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        new = (max(height, round(h * scale)), max(width, round(w * scale)))
        x = F.interpolate(images.float(), size=new, mode="bilinear", antialias=True, align_corners=False)
        top, left = (new[0] - height) // 2, (new[1] - width) // 2
        images = x[:, :, top:top + height, left:left + width].round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


@dataclass
class _Files(torch.utils.data.Dataset):
    paths: list[str]
    channels: int
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        try:
            return convert(read_image(self.paths[row]), self.channels, self.size), row, ""
        except Exception as exc:
            return None, row, f"{type(exc).__name__}: {exc}"


def _collate(items):
    good = [(image, row) for image, row, _ in items if image is not None]
    bad = [(row, error) for image, row, error in items if image is None]
    images = torch.stack([image for image, _ in good]) if good else None
    rows = torch.tensor([row for _, row in good], dtype=torch.long)
    return images, rows, bad


class PathArray(Sequence[str]):
    """File paths packed in two numpy arrays (UTF-8 bytes and offsets): about len(path) + 8 bytes a file.

    A list of a million ``str`` takes several times that, and DataLoader workers
    touching its objects' reference counts copy its pages one by one; numpy
    buffers are read without being written, so forked workers share them.
    """

    def __init__(self, paths: Iterable[str | os.PathLike]):
        data, offsets = bytearray(), array("q", [0])
        for path in paths:
            data += os.fsencode(path)
            offsets.append(len(data))
        self._data = np.frombuffer(data, dtype=np.uint8)  # a view of the bytearray: no second copy
        self._offsets = np.frombuffer(offsets, dtype=np.int64).copy()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"path {i} of {len(self)}")
        return os.fsdecode(self._data[self._offsets[i]:self._offsets[i + 1]].tobytes())

    @property
    def nbytes(self) -> int:
        return self._data.nbytes + self._offsets.nbytes


@dataclass
class ImagePool:
    """Unlabeled image files; ``index`` (int64) is each file's row number, stable for a sorted list.

    Nothing is decoded until asked: ``batches`` streams uint8 images through a
    DataLoader, ``images(rows)`` decodes just those rows.
    """

    paths: Sequence[str]  # held as a PathArray
    index: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if not isinstance(self.paths, PathArray):
            self.paths = PathArray(self.paths)
        if self.index is None:
            self.index = torch.arange(len(self.paths), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, channels: int, size: tuple[int, int], batch_size: int, workers: int = 0,
                start: int = 0, stop: int | None = None) -> Iterator[tuple[torch.Tensor | None, torch.Tensor,
                                                                          list[tuple[str, str]]]]:
        """(images uint8 [B, C, H, W] or None, index [B], [(path, error)] skipped) for rows start:stop."""
        stop = len(self) if stop is None else min(stop, len(self))
        subset = torch.utils.data.Subset(_Files(self.paths, channels, tuple(size)), range(start, stop))
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                             collate_fn=_collate)
        for images, rows, bad in loader:
            yield images, self.index[rows], [(self.paths[r], e) for r, e in bad]

    def rows_of(self, index: torch.Tensor) -> torch.Tensor:
        """The pool rows holding ``index`` (a KeyError names an index the pool does not have)."""
        if torch.equal(self.index, torch.arange(len(self.paths))):
            bad = index[(index < 0) | (index >= len(self.paths))]
            if len(bad):
                raise KeyError(f"index {int(bad[0])} is not in this pool of {len(self.paths)} files")
            return index.long()
        lookup = {int(i): r for r, i in enumerate(self.index.tolist())}
        return torch.tensor([lookup[int(i)] for i in index.tolist()], dtype=torch.long)

    def images(self, index: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
        """The images of the rows holding ``index`` (uint8 [M, C, H, W]); an undecodable one is an error here."""
        return self.files(index, channels, size)[:]

    def files(self, index: torch.Tensor, channels: int, size: tuple[int, int]) -> PoolImages:
        """The rows holding ``index`` as ``PoolImages``: read from their files only when a batch asks."""
        return PoolImages(PathArray(self.paths[r] for r in self.rows_of(index).tolist()), channels, tuple(size))


class PoolImages:
    """uint8 ``[N, C, H, W]`` images that live in files and are decoded when indexed.

    It stands in for an image tensor in an ``ImageSet``, so a student trains on
    a selection drawn from a pool that never fits in memory: ``Batches`` keeps
    it on the host and its DataLoader workers decode each batch's files (the
    host-placement path). Row ``r`` is file ``order[r]``, or, past the files,
    row ``order[r] - len(paths)`` of ``memory``. A file that cannot be decoded
    here is an error: it was decoded once already when the pool was scored.
    """

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")

    def __init__(self, paths: list[str], channels: int, size: tuple[int, int],
                 memory: torch.Tensor | None = None, order: torch.Tensor | None = None):
        self.paths = paths if isinstance(paths, PathArray) else PathArray(paths)  # packed: workers share it
        self.channels, self.size = channels, tuple(size)
        self.memory = memory.cpu() if memory is not None else None
        self.order = torch.arange(len(self.paths)) if order is None else order.long()

    def __len__(self) -> int:
        return len(self.order)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.order), self.channels, *self.size))

    def numel(self) -> int:
        return self.shape.numel()

    def element_size(self) -> int:
        return 1

    def to(self, device, *args, **kwargs) -> PoolImages:
        if torch.device(device).type != "cpu":
            raise ValueError("PoolImages are read on the host; batches move to the device")
        return self

    def with_memory(self, memory: torch.Tensor, rows: torch.Tensor) -> PoolImages:
        """These files followed by ``rows`` of ``memory`` (uint8 [L, C, H, W], repeats allowed): labeled
        images trained beside the pseudo-labeled ones. Only for files not combined before."""
        if self.memory is not None:
            raise ValueError("these PoolImages hold in-memory rows already")
        order = torch.cat([self.order, len(self.paths) + rows.long()])
        return PoolImages(self.paths, self.channels, self.size, memory, order)

    def take_rows(self, rows) -> PoolImages:
        """Some rows, still unread (what ``ImageSet.subset`` uses)."""
        return PoolImages(self.paths, self.channels, self.size, self.memory, self.order[torch.as_tensor(rows)])

    def __getitem__(self, rows) -> torch.Tensor:
        """Decode the rows asked for (a tensor, list, slice or int) into uint8 ``[M, C, H, W]``."""
        picked = self.order[rows]
        single = picked.ndim == 0
        out = torch.stack([self._read(int(r)) for r in picked.reshape(-1).tolist()]) if picked.numel() else \
            torch.empty((0, self.channels, *self.size), dtype=torch.uint8)
        return out[0] if single else out

    def _read(self, r: int) -> torch.Tensor:
        if r >= len(self.paths):
            return self.memory[r - len(self.paths)]
        return convert(read_image(self.paths[r]), self.channels, self.size)


def find_images(folder: Path) -> PathArray:
    """Image files under ``folder`` at any depth, in sorted order (a folder's files and subfolders by name,
    each subfolder's files where its name falls): the order of sorted paths, streamed, never all listed at once."""
    return PathArray(_walk(os.fspath(folder)))


def _walk(folder: str) -> Iterator[str]:
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
            yield entry.path
