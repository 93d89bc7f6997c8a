"""The one training loop. A method supplies a ``TrainTask``; this runs it.

Read top to bottom: set up optimizer, schedule and batches; resume from the
stage's checkpoint if there is one; then per epoch: train, evaluate on val and
test, checkpoint atomically, report. Every source of randomness in epoch e is
seeded from (stage seed, e), so a resumed run repeats an uninterrupted one.

Under torchrun (``distributed``) each rank trains on its shard of every
global batch; the trained modules are wrapped in DistributedDataParallel
(their gradients averaged over ranks), epoch metrics are summed over ranks,
and rank 0 alone writes the checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.schema import TrainingConfig
from ..data.loader import Batches
from ..data.types import DataInfo, ImageSet
from ..data.views import RecordedViews
from . import checkpoint, distributed
from .data_parallel import StepModule, data_parallel  # noqa: F401 (re-exported)
from .evaluation import evaluate, is_better, predict  # noqa: F401 (re-exported)
from .fit_protocol import (  # noqa: F401 (re-exported)
    Batch,
    BatchStep,
    NoRecorder,
    Recorder,
    Step,
    StepInfo,
    takes_batch,
    takes_info,
)
from .optim import build_optimizer, build_scheduler
from .progress import Progress
from .runtime import Runtime, autocast

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class TrainTask:
    """What a method hands the loop.

    ``step(batch, info)`` (a ``Step``: ``Batch`` and ``StepInfo``; an object may
    carry its lifecycle, ``epoch_start`` and ``fit_end``), or as before
    ``step(x, y)`` / ``step(x, y, info)`` with ``on_epoch`` and ``on_end``,
    returns the loss to minimise and extra per-batch metrics (tensors;
    averaged over the epoch, logged under ``train/``). ``model`` is
    trained, evaluated and exported; ``extra`` modules (regressors, heads)
    are trained and checkpointed with it but not exported; ``frozen`` ones
    (teachers) are kept in eval mode on the device.

    ``manual``: the step optimises by itself (methods that update several
    models per step with their own optimizers, such as Meta Pseudo Labels);
    the loop then neither backpropagates nor steps an optimizer or schedule,
    it only logs the returned loss. ``state`` holds the objects such a task
    keeps between steps (its optimizers, schedules, counters: anything with
    ``state_dict``/``load_state_dict``); the loop saves them in its per-epoch
    checkpoint and restores them on resume.

    Under torchrun the loop averages the gradients of ``model`` and ``extra``
    over ranks (DDP) for a task it steps; a ``manual`` task must do that
    itself (``distributed.average_gradients`` between its backward and its
    optimizer step) and say so with ``averages_gradients``, or it is refused
    with several processes rather than letting the ranks drift apart.

    ``views``: the training batches show recorded views (``mentor.RecordedViews``, from a teacher
    cache) instead of fresh augmentation draws; the stage's augmentation is then the one recorded.
    """

    model: nn.Module
    step: StepFn
    data: ImageSet
    extra: dict[str, nn.Module] = field(default_factory=dict)
    frozen: dict[str, nn.Module] = field(default_factory=dict)
    on_epoch: Callable[[int], None] | None = None  # told each epoch's number before it starts
    # called on every rank after the last epoch, before the fit's result is recorded (and again on a
    # resume that finds the last epoch's checkpoint): a final measurement logged here survives any kill
    on_end: Callable[[], None] | None = None
    manual: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    averages_gradients: bool = False
    views: RecordedViews | None = None

    def __post_init__(self):
        """A ``Step`` object's lifecycle (``epoch_start``, ``fit_end``) and the ``step(batch, info)`` form, put
        in the terms the loop calls (``on_epoch``, ``on_end``, ``step(x, y, info)``)."""
        typed = self.step
        if self.on_epoch is None and callable(getattr(typed, "epoch_start", None)):
            self.on_epoch = typed.epoch_start
        if self.on_end is None and callable(getattr(typed, "fit_end", None)):
            self.on_end = typed.fit_end
        if takes_batch(typed):
            self.step = BatchStep(typed)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite on more steps of an epoch than the stage allows: the epoch's
    weights are not saved (the last good checkpoint stays) and the stage's run ends FAILED."""


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best: dict[str, float]
    last: dict[str, float]
    best_state: dict[str, torch.Tensor] | None = None  # the model's weights at the best epoch, on the CPU
    stopped: str | None = None  # why a callback ended the loop early (ctx.stop_stage), if one did


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s weights on the CPU (what is kept of the best epoch)."""
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def check_finite(nonfinite: torch.Tensor, steps: int, allowed: int, stage: str, epoch: int) -> None:
    """Raise ``TrainingDiverged`` when more than ``allowed`` of the epoch's steps had a non-finite loss."""
    bad = int(nonfinite.item())
    if bad > allowed:
        raise TrainingDiverged(
            f"stage '{stage}' diverged: the loss was NaN or infinite on {bad} of {steps} steps of epoch "
            f"{epoch + 1} (allowed: {allowed}, max_nonfinite_steps); nothing of this epoch was saved. "
            "Lower the learning rate, add warm-up, or use a smaller loss weight")


def seed_for(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**31)


class FitRun:
    """One fit's moving parts, so that ``fit`` reads top to bottom: what is trained and how (``set_up``),
    where it stands (``resume``: epoch, history, best), and one epoch's train, evaluate, keep and save."""

    def __init__(self, task: TrainTask, cfg: TrainingConfig, stage: str, seed: int, runtime: Runtime,
                 checkpoint_path: Path, recorder: Recorder, log_every_steps: int):
        self.task, self.cfg, self.stage, self.seed, self.runtime = task, cfg, stage, seed, runtime
        self.checkpoint_path, self.recorder, self.log_every_steps = checkpoint_path, recorder, log_every_steps
        self.start, self.history, self.best, self.best_state, self.stopped = 0, [], {}, None, None

    def set_up(self, info: DataInfo, eval_sets: dict[str, ImageSet], augment) -> None:
        """Modules on the device, the optimizer and schedule, the batches, and the step to call."""
        task, cfg, runtime = self.task, self.cfg, self.runtime
        device = runtime.device
        memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
        for module in [task.model, *task.extra.values(), *task.frozen.values()]:
            module.to(device=device, memory_format=memory_format)
        for module in task.frozen.values():
            module.eval().requires_grad_(False)
        self.trainable = [task.model, *task.extra.values()]
        self.optimizer = None
        if not task.manual:
            self.optimizer = build_optimizer([p for m in self.trainable for p in m.parameters()], cfg.optimizer,
                                             device)
        rank, self.world = distributed.group_rank(), distributed.world_size()
        self.train = Batches(
            task.data, cfg.batch_size, shuffle=True, drop_last=len(task.data) > cfg.batch_size * self.world,
            mean=info.mean, std=info.std, device=device, seed=self.seed,
            augment=augment, rank=rank,
            world_size=self.world, placement=runtime.data_placement, workers=runtime.loader_workers,
            views=task.views,
        )
        self.evals = {  # each rank evaluates its part of the set; evaluate() adds the parts up
            name: Batches(data if self.world == 1 else data.subset(distributed.split(len(data), rank, self.world)),
                          cfg.eval_batch_size, shuffle=False, mean=info.mean, std=info.std, device=device,
                          placement=runtime.data_placement, workers=runtime.loader_workers)
            for name, data in eval_sets.items()
            if len(data) > 0
        }
        self.scheduler = None
        if self.optimizer is not None:
            self.scheduler = build_scheduler(self.optimizer, cfg.schedule, len(self.train), cfg.epochs,
                                             cfg.optimizer.lr)
        # a manual step calls backward and optimizers itself: compile its models, not the step
        self.with_info = takes_info(task.step)
        step_fn = torch.compile(task.step) if runtime.compile and not task.manual else task.step
        self.step_fn = data_parallel(task, step_fn, runtime)

    def resume(self) -> None:
        """Load the stage's checkpoint, if any: weights, optimizer, schedule, the task's state, where it stood."""
        task, path = self.task, self.checkpoint_path
        distributed.barrier()  # no rank looks for the checkpoint once rank 0 may be writing this stage's
        if not path.is_file():
            return
        state = checkpoint.load(path)
        checkpoint.load_weights(task.model, state["model"], str(path))
        for name, module in task.extra.items():
            checkpoint.load_weights(module, state["extra"][name], f"{path} (extra {name})")
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        for name, obj in task.state.items():
            obj.load_state_dict(state["state"][name])
        self.start, self.history, self.best = state["epoch"], state["history"], state["best"]
        self.best_state = state.get("best_model")
        self.stopped = state.get("stopped")
        if self.stopped:  # stopped early by a callback before the run was interrupted: it stays stopped
            self.start = self.cfg.epochs
        if distributed.is_main():
            for metrics in self.history:
                self.recorder.relog(metrics["epoch"], metrics)

    def train_epoch(self, epoch: int, progress: Progress) -> dict[str, float]:
        """One epoch of steps; its ``train/*`` means (over every rank), the rate it started with, throughput."""
        task, runtime, optimizer, device = self.task, self.runtime, self.optimizer, self.runtime.device
        torch.manual_seed(distributed.rank_seed(seed_for(self.seed, epoch)))  # dropout and any other global draws
        for module in self.trainable:
            module.train()
        progress.start_epoch(epoch)
        if task.on_epoch is not None:
            task.on_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        nonfinite = torch.zeros((), dtype=torch.int64, device=device)  # counted on the device: no sync per step
        batches, seen = 0, 0
        lr_start = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        t0 = time.perf_counter()
        for x, y in self.train.epoch(epoch):
            if runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr_now = optimizer.param_groups[0]["lr"] if optimizer is not None else None
            step_number = epoch * len(self.train) + batches + 1  # 1-based, over the whole fit
            with autocast(runtime):
                loss, extra = self.step_fn(x, y, StepInfo(epoch, step_number)) if self.with_info \
                    else self.step_fn(x, y)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                self.scheduler.step()
            nonfinite += (~torch.isfinite(loss.detach())).sum()
            for key, value in {"loss": loss, **extra}.items():
                value = value.detach().float()
                sums[key] = sums[key] + value if key in sums else value
            batches += 1
            seen += len(y)
            if self.log_every_steps and step_number % self.log_every_steps == 0 \
                    and distributed.is_main():  # one read of the device every log_every_steps steps
                values = {f"train/{k}": float(v.detach().float().mean()) for k, v in {"loss": loss, **extra}.items()}
                if lr_now is not None:
                    values["lr"] = lr_now
                self.recorder.step_metrics(step_number, values)
            progress.advance()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if distributed.active():
            nonfinite = distributed.all_reduce_sum(nonfinite)
        check_finite(nonfinite, batches * self.world, self.cfg.max_nonfinite_steps, self.stage, epoch)
        if distributed.active():  # one all-reduce per epoch: means over every rank's steps
            keys = sorted(sums)
            totals = distributed.all_reduce_sum(torch.stack([*(sums[k].to(device) for k in keys),
                                                             torch.tensor(float(seen), device=device)]))
            sums = dict(zip(keys, totals[:-1], strict=True))
            batches, seen = batches * self.world, int(totals[-1].item())
            distributed.broadcast_buffers(self.trainable)  # rank 0's BatchNorm statistics, evaluated and saved
        metrics = {f"train/{k}": v.item() / max(batches, 1) for k, v in sums.items()}
        if optimizer is not None:  # the rate the epoch started with (a manual task reports its own)
            metrics["lr"] = lr_start
        metrics["throughput"] = seen / max(elapsed, 1e-9)
        return metrics

    def evaluate(self) -> dict[str, float]:
        """``val/*`` and ``test/*`` of the model as it stands."""
        return {f"{name}/{key}": value for name, batches in self.evals.items()
                for key, value in evaluate(self.task.model, batches, self.runtime).items()}

    def keep(self, epoch: int, metrics: dict[str, float], evaluated: bool) -> None:
        """Add the epoch to the history; keep it as the best if it was evaluated and beats the best so far."""
        metrics["epoch"] = epoch
        self.history.append(metrics)
        if evaluated and is_better(metrics, self.best, self.cfg.select_on):
            self.best = dict(metrics)
            self.best_state = cpu_state(self.task.model) if self.cfg.keep == "best" else None

    def save(self, epoch: int) -> None:
        """The epoch's checkpoint, atomically, on rank 0, after what was logged is durable."""
        if not distributed.is_main():
            return
        task = self.task
        self.recorder.flush()  # the steps logged so far are in the store before the checkpoint says they ran
        checkpoint.save_atomic(
            {
                "model": task.model.state_dict(),
                "extra": {k: m.state_dict() for k, m in task.extra.items()},
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "state": {k: obj.state_dict() for k, obj in task.state.items()},
                "epoch": epoch + 1,
                "history": self.history,
                "best": self.best,
                "best_model": self.best_state,
            },
            self.checkpoint_path,
        )

    def mark_stopped(self) -> None:
        if distributed.is_main():
            state = checkpoint.load(self.checkpoint_path)
            checkpoint.save_atomic({**state, "stopped": self.stopped}, self.checkpoint_path)

    def result(self) -> FitResult:
        return FitResult(history=self.history, best=self.best, last=self.history[-1] if self.history else {},
                         best_state=self.best_state, stopped=self.stopped)


def fit(
    task: TrainTask,
    cfg: TrainingConfig,
    *,
    stage: str,
    seed: int,
    info: DataInfo,
    eval_sets: dict[str, ImageSet],
    augment,  # the data's modality's augmenter (ctx.augmenter: draw + apply), or None
    runtime: Runtime,
    checkpoint_path: Path,
    recorder: Recorder | None = None,
    log_every_steps: int = 0,
) -> FitResult:
    """Train ``task`` for ``cfg.epochs``, recording into ``recorder`` (see ``Recorder``): its ``epoch_end``
    after each epoch (0-based), ``step_metrics`` every ``log_every_steps`` steps on rank 0 (1-based step of
    this fit: the step's loss and terms, and the learning rate it used).

    For a kill at any moment to lose nothing: ``recorder.flush()`` makes what was logged durable before each
    checkpoint is written, and on resume ``recorder.relog(epoch, metrics)`` is called for each epoch the
    checkpoint holds (the epoch a kill cut off between its checkpoint and its report included).

    A step written as ``step(x, y, info)`` gets a ``StepInfo`` (epoch and step); ``step(x, y)`` works as
    before."""
    run = FitRun(task, cfg, stage, seed, runtime, checkpoint_path,
                 recorder if recorder is not None else NoRecorder(), log_every_steps)
    run.set_up(info, eval_sets, augment)
    run.resume()
    progress = Progress(runtime.progress if distributed.is_main() else "none", stage, cfg.epochs, len(run.train))
    try:
        for epoch in range(run.start, cfg.epochs):
            metrics = run.train_epoch(epoch, progress)
            evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
            if evaluated:
                progress.phase("evaluating")
                metrics.update(run.evaluate())
            run.keep(epoch, metrics, evaluated)
            progress.phase("saving checkpoint")
            run.save(epoch)
            progress.phase("logging")
            run.stopped = run.recorder.epoch_end(epoch, metrics)
            progress.end_epoch(epoch, metrics)
            if run.stopped:  # a callback ended this loop: say so in the checkpoint, so a resume does not go on
                run.mark_stopped()
                break
    finally:
        progress.close()
    return run.result()
