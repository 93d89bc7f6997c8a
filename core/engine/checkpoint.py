"""Atomic checkpoints: a run killed at any moment leaves the last good one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(Exception):
    """Weights cannot be had (a missing or unreadable file, an unknown MLflow model, a failed download)
    or do not fit the model. The CLI reports it in one line with exit code 2."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> Any:
    """Load a checkpoint with ``weights_only`` (no code runs); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def state_dict_of(saved: Any) -> Any:
    """The state_dict in a saved object: the object itself, or its 'state_dict' or 'model' entry
    (the loop's checkpoint.pt holds the model under 'model', beside the optimizer's state)."""
    if isinstance(saved, dict):
        for key in ("state_dict", "model"):
            if isinstance(saved.get(key), dict):
                return saved[key]
    return saved


def load_weights(module: torch.nn.Module, state: dict, source: str) -> None:
    """Load a state_dict, turning a mismatch into a located CheckpointError."""
    state = state_dict_of(state)
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0:3]
        raise CheckpointError(f"{source}: weights do not fit the model: {' '.join(first)}") from None
