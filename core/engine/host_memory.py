"""Freed host memory kept for the next step, on the CPU: the page faults it saves were a tenth of a step.

Why: glibc's malloc gives large freed blocks back to the operating system
(blocks above its mmap threshold, and a heap top above its trim threshold),
so each forward pass of a large model asks for them again and the kernel
zeroes them page by page. On this project's 2-core CPU machine, the KD step
resnet32x4 -> resnet8x4 at batch 64 spent 813-881 ms in the teacher's
forward and ran at 47-51 images/s; with the thresholds below, 673-689 ms and
55-58 images/s, level with a plain PyTorch loop (docs/benchmarks.md, "Where
a CPU step's time went"). A plain script escapes this only by luck: the
order in which its blocks are freed can raise glibc's adaptive thresholds.
PyTorch's CPU tuning guide suggests jemalloc or TCMalloc for the same
reason; ``mallopt`` gets the effect without another library.

The cost: the process keeps up to ``TRIM_BYTES`` of freed memory instead
of returning it, and blocks up to ``MMAP_BYTES`` come from its heap (larger
ones are still mapped and returned). Only glibc on Linux has ``mallopt``;
elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_BYTES = 32 * 1024 * 1024  # glibc's largest allowed mmap threshold on 64-bit
TRIM_BYTES = 1024 * 1024 * 1024

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds so that freed blocks are reused, once per process; whether it applied."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1
    return _applied
