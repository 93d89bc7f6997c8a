"""Atomic checkpoints: a run killed at any moment leaves the last good one."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..state_dicts import WeightsMismatch, find_state_dict, mismatch, strip_wrapper_prefix


class CheckpointError(Exception):
    """Weights cannot be had (a missing or unreadable file, an unknown MLflow model, a failed download)
    or do not fit the model. The CLI reports it in one line with exit code 2."""


class StateWriteError(CheckpointError):
    """Resume state or weights could not be written (a full disk, a read-only folder); names the file."""


def write_atomic(path: str | Path, write) -> None:
    """``write(handle)`` into a temporary file in the same folder, then rename over ``path``: a reader
    (or a resumed run) sees the old file or the new one, never half of one. A failure to write is a
    ``StateWriteError`` that names the file and, for a full disk, says so (torch's own message for it
    is ``[enforce fail at inline_container.cc] unexpected pos``)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not _is_write_fault(exc):
            raise
        raise StateWriteError(f"{path}: cannot write it: {_why(exc, path)}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def _clear_stale(path: Path) -> None:
    """Delete the temporary files of ``path`` that a killed writer left (``.<name>.<pid>.*.tmp`` of a pid
    that no longer runs): a run killed while writing resumes without its litter."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if not (pid.isdigit() and pid_alive(int(pid))):
            tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine with that id runs (a process of another user counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _is_write_fault(exc: BaseException) -> bool:
    """An OSError, or torch's RuntimeError for a stream it could not write (a full disk); any other
    RuntimeError (an object that cannot be pickled) is a bug and keeps its own type."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    marks = ("inline_container", "unexpected pos", "PytorchStreamWriter", "file write failed")
    return any(mark in text for mark in marks)


def _why(exc: BaseException, path: Path) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the device"
    try:
        free = shutil.disk_usage(next(p for p in (path.parent, *path.parents) if p.exists())).free
    except (OSError, StopIteration):
        free = None
    if free is not None and free < 64 << 20:
        return f"no space left on the device ({free:,} bytes free)"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (see ``write_atomic``)."""
    write_atomic(path, lambda handle: torch.save(obj, handle))


def write_text_atomic(text: str, path: str | Path) -> None:
    """A small text file (a stage's result.json, a report) written atomically."""
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def load(path: str | Path) -> Any:
    """Load a checkpoint with ``weights_only`` (no code runs); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def load_weights(module: torch.nn.Module, state: Any, source: str, key: str | None = None) -> None:
    """Load saved weights into ``module``, or raise a CheckpointError that says, located at ``source``,
    what does not fit: no state_dict (and which key holds one), a head for other classes, missing,
    unexpected or misshapen keys. A wrapper's key prefix (DDP's ``module.``, Lightning's ``model.``,
    torch.compile's ``_orig_mod.``) is removed when that is what stands between them."""
    try:
        state = find_state_dict(state, key)
    except WeightsMismatch as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    expected = module.state_dict()
    state = strip_wrapper_prefix(state, set(expected))
    problem = mismatch(state, expected)
    if problem is not None:
        raise CheckpointError(f"{source}: weights do not fit the model: {problem}")
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0:3]
        raise CheckpointError(f"{source}: weights do not fit the model: {' '.join(first)}") from None
