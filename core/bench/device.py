"""What the bench says about the device: its name, its peak FLOP/s, peak memory.

Peaks are the vendors' dense bf16 tensor-core figures (no sparsity), the
usual denominator of model FLOPs utilisation (MFU). Matched on the name torch
reports, most specific first; ``--peak-tflops`` overrides, and is the only way
to get an MFU on a CPU or an unlisted GPU.
"""

from __future__ import annotations

import os
import platform
import resource
import sys

import torch

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
)
"""(substring of the CUDA device name, dense bf16 TFLOP/s), first match wins."""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device, peak_tflops: float | None = None) -> dict:
    """The report's ``device`` block: type, name, and the peak that MFU is taken against."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        listed = next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in name.lower()), None)
        info = {"type": "cuda", "name": name, "count": torch.cuda.device_count(),
                "cuda": torch.version.cuda}
    else:
        name, listed = cpu_name(), None
        info = {"type": device.type, "name": name, "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    if peak_tflops is not None:
        info.update(peak_tflops=peak_tflops, peak_source="--peak-tflops")
    elif listed is not None:
        info.update(peak_tflops=listed, peak_source="dense bf16 table (mentor.bench.device)")
    else:
        info.update(peak_tflops=None, peak_source=None)
    return info


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA's peak allocated since the last reset, or this process's peak RSS on a CPU.

    The CPU figure is the whole process's high-water mark since it started
    (data set included), not the stage's alone: ``ru_maxrss`` cannot be reset.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"
