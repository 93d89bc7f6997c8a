"""What a model costs: parameters, bytes on disk, FLOPs per image, CPU latency and throughput.

Latency is measured, never estimated: warm-up calls first, then ``repeats``
timed calls at batch 1, reported as the median (p50) and 95th percentile in
milliseconds; throughput is images per second at a larger batch (its median
call). ``machine()`` says where it ran, for the label every figure carries.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, example: torch.Tensor) -> float:
    """Floating-point operations of one forward pass on one image (torch.utils.flop_counter counts a
    multiply-add as 2 FLOPs, so MACs are half of it)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = getattr(model, "_orig_mod", model).float().cpu().eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example[:1].float().cpu())
    return float(counter.get_total_flops())


def file_mb(path: Path | str) -> float:
    """A file's size in MB (10^6 bytes)."""
    return os.path.getsize(path) / 1e6


def _percentile(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times) * 1000.0, q))


def time_calls(call: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds each of ``repeats`` calls took, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def latency(run: Callable[[torch.Tensor], object], image: torch.Tensor, batch: int, *, warmup: int = 10,
            repeats: int = 50) -> dict[str, float]:
    """p50/p95 latency (ms) at batch 1 and throughput (images/s) at ``batch`` of ``run`` (a callable on a
    normalised float batch)."""
    one = image[:1].float().cpu().contiguous()
    many = one.expand(batch, *one.shape[1:]).contiguous()
    single = time_calls(lambda: run(one), warmup, repeats)
    batched = time_calls(lambda: run(many), max(1, warmup // 5), max(3, repeats // 5))
    return {"latency_p50_ms": _percentile(single, 50), "latency_p95_ms": _percentile(single, 95),
            "throughput_ips": batch / float(np.median(batched))}


def torch_runner(model: nn.Module) -> Callable[[torch.Tensor], object]:
    """``model`` as a callable for ``latency``: on the CPU, eval mode, no autograd."""
    model = getattr(model, "_orig_mod", model).float().cpu().eval()

    def run(x: torch.Tensor):
        with torch.inference_mode():
            return model(x)

    return run


def machine() -> str:
    """The CPU these figures were measured on, its core count and the threads torch uses."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {platform.system()}"
