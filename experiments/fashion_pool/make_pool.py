"""Write Fashion-MNIST training images as PNG files, labels dropped: a stand-in for your own folder.

    python experiments/fashion_pool/make_pool.py /tmp/fashion_pool 20000

Files go into nested folders (``<a>/<b>/<n>.png``) to show that a pool is
searched at any depth. Images are taken from the end of the training set.
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_DIR = os.environ.get("MENTOR_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to fill")
    parser.add_argument("count", type=int, nargs="?", default=20_000, help="images to write (default 20,000)")
    parser.add_argument("--source", type=Path, default=Path(DEFAULT_DIR), help="the idx files' folder")
    args = parser.parse_args()
    with gzip.open(args.source / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    images = images[-args.count:]
    for i, image in enumerate(images):
        folder = args.out / f"{i // 1000:03d}" / f"{(i // 100) % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:06d}.png")
    print(f"wrote {len(images)} PNG files under {args.out}")


if __name__ == "__main__":
    main()
