"""The KD step resnet32x4 -> resnet8x4 as a plain PyTorch loop: the baseline for `mentor bench`.

    python experiments/benchmarks/plain_kd.py [--batch-size 256] [--steps 50] [--warmup 10]
        [--workers 8] [--bf16] [--channels-last] [--images 50000] [--device auto]

What a typical hand-written distillation script does: a torchvision
``DataLoader`` (worker processes, pinned memory) over a map-style dataset of
PIL images, torchvision's per-image transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize), a frozen teacher in eval mode
under ``no_grad``, the student trained with SGD on 0.1 cross-entropy + 0.9 KD
at T=4, fp32 unless ``--bf16``. The models are mentor's own
(``mentor_plugins.models``), so the architectures are the ones `mentor bench
experiments/benchmarks/kd_resnet32x4_resnet8x4.yaml` times.

CIFAR-100 is not on disk everywhere, so the dataset is ``--images`` random
uint8 32x32x3 images with random labels (seeded), held in memory and turned
into PIL images one at a time as torchvision's CIFAR100 dataset does; the
work per image is the same as on the real set.

Timing: ``--warmup`` steps, then ``--steps`` steps timed end to end with a
device sync at the end only. Prints one JSON object (images/s, step time, the
settings and the machine) on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class RandomPILImages(Dataset):
    """``n`` random uint8 HxWx3 images with labels, served as PIL images like torchvision's CIFAR datasets."""

    def __init__(self, n: int, size: int, classes: int, transform, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        self.targets = rng.integers(0, classes, size=n).tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """Hinton et al.: KL(teacher_T || student_T) * T^2, batch mean."""
    return F.kl_div(F.log_softmax(student.float() / t, 1), F.log_softmax(teacher.float() / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def build_models(args, device):
    from mentor_plugins.models import cifar_resnet, small_cnn

    factories = {"resnet32x4": cifar_resnet.resnet32x4, "resnet8x4": cifar_resnet.resnet8x4,
                 "small_cnn": small_cnn.small_cnn}
    teacher = factories[args.teacher](args.classes, 3).to(device).eval().requires_grad_(False)
    student = factories[args.student](args.classes, 3).to(device).train()
    if args.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    return teacher, student


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--images", type=int, default=50_000, help="size of the random in-memory dataset")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--teacher", default="resnet32x4", choices=["resnet32x4", "resnet8x4", "small_cnn"])
    parser.add_argument("--student", default="resnet8x4", choices=["resnet32x4", "resnet8x4", "small_cnn"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from torchvision import transforms

    from mentor.bench.device import cpu_name

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    transform = transforms.Compose([
        transforms.RandomCrop(args.image_size, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
    ])
    dataset = RandomPILImages(args.images, args.image_size, args.classes, transform, args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0)
    teacher, student = build_models(args, device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def batches():
        while True:
            yield from loader

    def step(x, y):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            loss = 0.1 * F.cross_entropy(s_logits.float(), y) + 0.9 * kd_loss(s_logits, t_logits, 4.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    it = batches()
    for _ in range(args.warmup):
        step(*next(it))
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(*next(it))
    sync()
    elapsed = time.perf_counter() - t0
    result = {
        "script": "experiments/benchmarks/plain_kd.py",
        "images_per_second": args.steps * args.batch_size / elapsed,
        "step_ms": 1e3 * elapsed / args.steps,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "precision": "bf16" if args.bf16 else "fp32",
        "channels_last": args.channels_last,
        "teacher": args.teacher,
        "student": args.student,
        "images": args.images,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "device_type": device.type,
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
