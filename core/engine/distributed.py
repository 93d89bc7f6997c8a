"""Several processes under torchrun (DDP): this process's rank and the few collectives mentor needs.

torchrun starts one process per device and sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``. ``group(device)`` joins them into a process group (NCCL on
``cuda:LOCAL_RANK``, gloo on the CPU) for the length of a run. Without those
variables, or with ``WORLD_SIZE=1``, there is no group and every function
here is a no-op that returns its input: a single process runs exactly as it
would without this module (bit-identical results).

Rank 0 is the main process: it alone talks to MLflow, writes checkpoints and
prints progress; the others train and evaluate their shard.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..data.sharding import shard, split  # noqa: F401  (part of this module's interface)
from ..data.splits import derive_seed

T = TypeVar("T")


def launched_world_size() -> int:
    """Processes torchrun started for this job (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    """Whether this process is one of several in a process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: the group's, else torchrun's ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def group_rank() -> int:
    """This process's place among the ranks training together: 0 outside a process group.

    Unlike ``rank()`` it ignores torchrun's ``RANK`` when no group is open, so
    shards and per-rank seeds of a single process are the single process's.
    """
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Processes training together (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process records, checkpoints and prints (rank 0)."""
    return rank() == 0


@contextlib.contextmanager
def group(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group for a block; yields this rank's device.

    On CUDA each rank gets ``cuda:LOCAL_RANK`` and NCCL; on the CPU, gloo. A
    group that already exists (a caller's own) is used as it is and left open.
    """
    if launched_world_size() <= 1:
        yield device
        return
    if not dist.is_available():
        raise RuntimeError("torchrun started several processes but torch.distributed is not available")
    cuda = device.type == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices are visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    try:
        yield device
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (rank 0's files are then complete for the others)."""
    if active():
        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (small picklable objects: run ids, paths, metrics)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank gets its result, or raises its exception.

    For decisions one process must take (which MLflow run to create or resume):
    the others wait for the answer instead of asking the store themselves.
    """
    if not active():
        return fn()
    outcome: Any = None
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # handed to every rank, then raised by all of them
            outcome = ("error", _portable(exc))
    kind, value = broadcast(outcome)
    if kind == "error":
        raise value
    return value


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (to reach the other ranks), else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block before the others (a download, a cache that one process fills)."""
    if not active():
        yield
        return
    if not is_main():
        dist.barrier()
    yield
    if is_main():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum of ``values`` over ranks (a new tensor; ``values`` itself is left alone)."""
    if not active():
        return values
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def average_gradients(modules: nn.Module | Iterable[nn.Module]) -> None:
    """Replace each parameter's ``.grad`` by its mean over ranks, in one flat all-reduce.

    For methods that step their own optimizers (``TrainTask.manual``): call it
    between ``backward()`` and ``optimizer.step()``, as DDP would have done.
    """
    if not active():
        return
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    grads = [p.grad for m in modules for p in m.parameters() if p.requires_grad and p.grad is not None]
    average_tensors(grads)


def average_tensors(tensors: list[torch.Tensor]) -> None:
    """In place: each tensor becomes its mean over ranks (same shapes and order on every rank)."""
    if not active() or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group_ in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group_])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= dist.get_world_size()
        offset = 0
        for t in group_:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def broadcast_buffers(modules: Iterable[nn.Module]) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank.

    Each rank updates its statistics from its own shard; before evaluating and
    checkpointing, all ranks take rank 0's, as DDP does at each forward.
    """
    if not active():
        return
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def rank_seed(seed: int) -> int:
    """The seed of this rank's own draws (augmentation, dropout): ``seed`` itself on rank 0.

    Rank 0 draws what a single process draws; rank r > 0 from a seed derived
    from ``(seed, r)``, so the ranks' augmentations differ.
    """
    r = group_rank()
    return seed if r == 0 else derive_seed(seed, "rank", r) % 2**63
