"""Measure one stage's training step by running the real loop (``engine.loop.fit``) for a few steps.

Every pass below is a call of the loop a run uses, on a ``TrainTask`` whose
data is cut to exactly the number of batches wanted (rows repeat when the
split is smaller), for one epoch, with no evaluation sets and a scratch
checkpoint. So the figures include what a real step includes (batch
indexing, augmentation and normalisation on the device, autocast,
channels_last, compile, fused optimizers, the schedule, the on-device metric
sums) and nothing a step does not (evaluation, checkpointing and logging
happen at epoch ends, outside the loop's own epoch timer that gives the
throughput).

Passes, in order:

1. warm-up: ``warmup`` steps (compilation, cuDNN autotuning, allocator);
2. throughput: ``steps`` steps, nothing synchronised inside; mean step time
   from the loop's epoch timer, median from per-step marks (``StepMarks``);
   peak memory over this pass;
3. breakdown: ``steps`` steps with a host sync at every part boundary
   (``Breakdown``), eager (a compiled step cannot be split);
4. FLOPs: one step under ``torch.utils.flop_counter.FlopCounterMode``
   (forward and backward of every module the step runs, teacher included;
   elementwise ops and the optimizer are not counted, as usual for MFU).
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config.schema import TrainingConfig
from ..engine.loop import NoRecorder, Runtime, TrainTask, fit, takes_info
from .device import peak_memory, reset_peak_memory
from .timing import PARTS, Breakdown, StepMarks

_counter = itertools.count()


def teacher_modules(task: TrainTask) -> list[torch.nn.Module]:
    """Modules whose forward counts as the teacher's: the frozen ones, and an ``extra`` named teacher.

    The second covers methods that train their teacher in a manual step
    (Meta Pseudo Labels keeps it in ``extra["teacher"]``).
    """
    modules = list(task.frozen.values())
    if "teacher" in task.extra and task.extra["teacher"] not in modules:
        modules.append(task.extra["teacher"])
    return modules


def run_steps(ctx, task: TrainTask, cfg: TrainingConfig, steps: int, runtime: Runtime, scratch: Path) -> dict:
    """The loop on ``task`` for exactly ``steps`` full batches (one epoch); the epoch's metrics."""
    bs = cfg.batch_size
    rows = torch.arange(steps * bs) % len(task.data)
    one_epoch = cfg.model_copy(update={"epochs": 1, "eval_every": 1})
    checkpoint = scratch / f"bench-{next(_counter)}.pt"  # fresh: the loop resumes from an existing one
    views = task.views.subset(rows) if task.views is not None else None  # each row keeps its recorded views
    recorder = NoRecorder()
    fit(dataclasses.replace(task, data=task.data.subset(rows), views=views), one_epoch, stage=f"bench/{ctx.stage.name}",
        seed=ctx.seed, info=ctx.info, eval_sets={}, augment=ctx.augmenter(cfg),
        runtime=runtime, checkpoint_path=checkpoint, recorder=recorder)
    checkpoint.unlink(missing_ok=True)
    return recorder.last


def _with_on_epoch(task: TrainTask, before) -> TrainTask:
    """``task`` whose epoch start also calls ``before`` (after the method's own ``on_epoch``)."""
    inner = task.on_epoch

    def on_epoch(epoch: int) -> None:
        if inner is not None:
            inner(epoch)
        before()

    return dataclasses.replace(task, on_epoch=on_epoch)


def throughput_pass(ctx, task, cfg, steps, runtime, scratch) -> dict[str, Any]:
    marks = StepMarks(runtime.device)
    handle = None
    if task.manual:  # the loop does not compile a manual step, so wrapping it changes nothing
        inner, passes = task.step, takes_info(task.step)

        def step(x, y, *info):
            out = inner(x, y, *info) if passes else inner(x, y)
            marks.mark()
            return out

        timed = _with_on_epoch(dataclasses.replace(task, step=step), marks.mark)
    else:  # the loop's optimizer step ends each step; marking there leaves a compiled step whole
        from torch.optim.optimizer import register_optimizer_step_post_hook

        handle = register_optimizer_step_post_hook(lambda *_: marks.mark())
        timed = _with_on_epoch(task, marks.mark)
    reset_peak_memory(runtime.device)
    try:
        metrics = run_steps(ctx, timed, cfg, steps, runtime, scratch)
    finally:
        if handle is not None:
            handle.remove()
    memory, kind = peak_memory(runtime.device)
    images = cfg.batch_size
    mean_ms = 1e3 * images / metrics["throughput"]
    intervals = marks.intervals_ms()
    return {"images_per_second": metrics["throughput"], "mean_ms": mean_ms,
            "median_ms": statistics.median(intervals) if intervals else mean_ms,
            "peak_memory_bytes": memory, "peak_memory_kind": kind}


def breakdown_pass(ctx, task, cfg, steps, runtime, scratch) -> dict[str, Any]:
    probe = Breakdown(runtime.device, teacher_modules(task), task.manual)
    timed = _with_on_epoch(dataclasses.replace(task, step=probe.wrap_step(task.step)), probe.start)
    probe.install()
    try:
        metrics = run_steps(ctx, timed, cfg, steps, runtime, scratch)
    finally:
        probe.remove()
    mean_ms = 1e3 * cfg.batch_size / metrics["throughput"]  # the loop's epoch timer, as in the throughput pass
    parts = probe.mean_ms()
    parts["other"] = max(0.0, mean_ms - sum(v for v in parts.values() if v is not None))
    per_step = probe.step_ms()
    return {"mean_ms": mean_ms, "median_ms": statistics.median(per_step) if per_step else mean_ms,
            "parts": parts}


def count_flops(ctx, task, cfg, runtime, scratch) -> int:
    """FLOPs of one step (forward and backward), as ``FlopCounterMode`` counts them."""
    with FlopCounterMode(display=False) as counter:
        run_steps(ctx, task, cfg, 1, runtime, scratch)
    return int(counter.get_total_flops())


def measure_task(ctx, task: TrainTask, cfg: TrainingConfig, *, steps: int, warmup: int,
                 peak_tflops: float | None) -> dict[str, Any]:
    """The stage's figures (one entry of the report's ``stages``)."""
    runtime = dataclasses.replace(ctx.runtime, progress="none")
    eager = dataclasses.replace(runtime, compile=False)
    with tempfile.TemporaryDirectory(prefix="mentor-bench-") as tmp:
        scratch = Path(tmp)
        if warmup:
            run_steps(ctx, task, cfg, warmup, runtime, scratch)
        fast = throughput_pass(ctx, task, cfg, steps, runtime, scratch)
        if runtime.compile and warmup:  # the eager kernels have not run yet
            run_steps(ctx, task, cfg, warmup, eager, scratch)
        probed = breakdown_pass(ctx, task, cfg, steps, eager, scratch)
        flops = count_flops(ctx, task, cfg, eager, scratch)
    step_s = fast["mean_ms"] / 1e3
    achieved = flops / step_s / 1e12 if flops else None
    parts = probed["parts"]
    loop = (parts["data"] or 0.0) + parts["other"]
    return {
        "stage": ctx.stage.name,
        "kind": ctx.stage.kind,
        "manual": task.manual,
        "batch_size": cfg.batch_size,
        "images_per_step": cfg.batch_size,
        "images_per_second": fast["images_per_second"],
        "step_ms": {"mean": fast["mean_ms"], "median": fast["median_ms"]},
        "instrumented_step_ms": {"mean": probed["mean_ms"], "median": probed["median_ms"]},
        "breakdown_ms": {part: parts[part] for part in (*PARTS, "other")},
        "overhead": {
            "loop_fraction": loop / probed["mean_ms"],
            "instrumentation_fraction": probed["mean_ms"] / fast["mean_ms"] - 1.0,
        },
        "peak_memory_bytes": fast["peak_memory_bytes"],
        "peak_memory_kind": fast["peak_memory_kind"],
        "flops_per_step": flops,
        "achieved_tflops": achieved,
        "mfu": achieved / peak_tflops if achieved is not None and peak_tflops else None,
    }
