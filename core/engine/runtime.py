"""Where and how stages run: device, precision and memory format, from the experiment's engine settings."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .host_memory import keep_freed_memory


@dataclass
class Runtime:
    """Where and how a stage runs (from the experiment's engine settings)."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    compile: bool
    progress: str
    data_placement: str = "auto"  # Batches' placement: device (the fast path), host (DataLoader workers), auto
    loader_workers: int = 2


def choose_runtime(engine) -> Runtime:
    """The runtime an ``engine:`` section asks for (CUDA when there is one, unless told otherwise)."""
    if engine.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("engine.device is 'cuda' but no CUDA device is available")
    cuda = engine.device == "cuda" or (engine.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    bf16 = engine.precision == "bf16" or (engine.precision == "auto" and cuda)
    channels_last = engine.channels_last if engine.channels_last is not None else cuda
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        if engine.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if engine.keep_host_memory:
            keep_freed_memory()
    return Runtime(device, torch.bfloat16 if bf16 else None, channels_last, engine.compile, engine.progress,
                   engine.data_placement, engine.loader_workers)


def autocast(runtime: Runtime):
    if runtime.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.autocast_dtype)
