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

from ..config.schema import AugmentConfig, TrainingConfig
from ..data.augment import BatchAugment
from ..data.loader import Batches
from ..data.types import DataInfo, ImageSet
from ..data.views import RecordedViews
from ..losses import flatten_positions
from . import checkpoint, distributed
from .fit_protocol import NoRecorder, Recorder, StepInfo, takes_info  # noqa: F401 (re-exported)
from .optim import build_optimizer, build_scheduler
from .progress import Progress
from .runtime import Runtime, autocast

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class TrainTask:
    """What a method hands the loop.

    ``step(x, y)`` (or ``step(x, y, info)``, which also gets a ``StepInfo``: the
    epoch and step) returns the loss to minimise and extra per-batch metrics
    (tensors; averaged over the epoch, logged under ``train/``). ``model`` is
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


class StepModule(nn.Module):
    """The trained modules with the step as forward: what DistributedDataParallel wraps.

    Methods' steps call their models directly (``model(x)``, a feature tap);
    running the whole step as this module's forward puts every such call
    inside DDP's forward, so DDP sees each iteration and averages the
    gradients of all trained parameters, however the step reached them.
    """

    def __init__(self, step: StepFn, modules: list[nn.Module]):
        super().__init__()
        self.step = step
        self.trained = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, y: torch.Tensor, *info):
        return self.step(x, y, *info)


def data_parallel(task: TrainTask, step: StepFn, runtime: Runtime) -> StepFn:
    """The step to call: as it is in one process, through DDP with several."""
    if not distributed.active():
        return step
    if task.manual:
        if not task.averages_gradients:
            raise ValueError("this method steps its own optimizers without averaging gradients over processes "
                             "(TrainTask.averages_gradients): run it in one process, not under torchrun")
        return step
    trained = [task.model, *task.extra.values()]
    if not any(p.requires_grad for m in trained for p in m.parameters()):
        return step
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(StepModule(step, trained), device_ids=device_ids)


def batch_augment(cfg: AugmentConfig | None) -> BatchAugment | None:
    """An image augmentation config's ``BatchAugment`` (``ImageModality.augmenter``; another modality's
    augmenter is handed to ``fit`` built)."""
    if cfg is None:
        return None
    strong = (cfg.randaugment.num_ops, cfg.randaugment.magnitude) if cfg.randaugment else None
    return BatchAugment(cfg.crop_padding, cfg.flip, strong)


def seed_for(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**31)


def is_better(metrics: dict[str, float], best: dict[str, float], key: str) -> bool:
    """Whether this epoch beats the best so far on ``key`` (losses lower, others higher).

    Without ``key`` (no validation set) every epoch is "best", so best equals last.
    """
    if key not in metrics or not best or key not in best:
        return True
    if key.endswith("loss"):
        return metrics[key] < best[key]
    return metrics[key] > best[key]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, runtime: Runtime) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` over ``batches``.

    Under torchrun each rank passes its own part of the set; the sums are
    added over ranks, so every rank gets the whole set's metrics.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=runtime.device)
    loss_sum = torch.zeros((), device=runtime.device)
    count = 0
    for x, y in batches.epoch(0):
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(runtime):
            logits = model(x)
        logits, y = flatten_positions(logits, y)  # per token: the positions that count
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    totals = torch.stack([correct.double(), loss_sum.double(),
                          torch.tensor(float(count), device=runtime.device, dtype=torch.float64)])
    correct, loss_sum, count = distributed.all_reduce_sum(totals).tolist()  # one read of the device
    if count == 0:
        return {}
    return {"accuracy": correct / count, "loss": loss_sum / count}


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, predicted classes) over ``batches``, on the CPU."""
    model.eval()
    ys, ps = [], []
    for x, y in batches.epoch(0):
        with autocast(runtime):
            logits, y = flatten_positions(model(x), y)
        ps.append(logits.argmax(1).cpu())
        ys.append(y.cpu())
    return torch.cat(ys), torch.cat(ps)


def fit(
    task: TrainTask,
    cfg: TrainingConfig,
    *,
    stage: str,
    seed: int,
    info: DataInfo,
    eval_sets: dict[str, ImageSet],
    augment: AugmentConfig | BatchAugment | None,  # a config (images) or a modality's built augmenter
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
    recorder = recorder if recorder is not None else NoRecorder()
    device = runtime.device
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    for module in [task.model, *task.extra.values(), *task.frozen.values()]:
        module.to(device=device, memory_format=memory_format)
    for module in task.frozen.values():
        module.eval().requires_grad_(False)

    trainable = [task.model, *task.extra.values()]
    optimizer = None
    if not task.manual:
        optimizer = build_optimizer([p for m in trainable for p in m.parameters()], cfg.optimizer, device)
    rank, world = distributed.group_rank(), distributed.world_size()
    train = Batches(
        task.data, cfg.batch_size, shuffle=True, drop_last=len(task.data) > cfg.batch_size * world,
        mean=info.mean, std=info.std, device=device, seed=seed,
        augment=augment if hasattr(augment, "draw") else batch_augment(augment), rank=rank, world_size=world,
        placement=runtime.data_placement, workers=runtime.loader_workers, views=task.views,
    )
    evals = {  # each rank evaluates its part of the set; evaluate() adds the parts up
        name: Batches(data if world == 1 else data.subset(distributed.split(len(data), rank, world)),
                      cfg.eval_batch_size, shuffle=False, mean=info.mean, std=info.std, device=device,
                      placement=runtime.data_placement, workers=runtime.loader_workers)
        for name, data in eval_sets.items()
        if len(data) > 0
    }
    scheduler = None
    if optimizer is not None:
        scheduler = build_scheduler(optimizer, cfg.schedule, len(train), cfg.epochs, cfg.optimizer.lr)
    # a manual step calls backward and optimizers itself: compile its models, not the step
    with_info = takes_info(task.step)
    step_fn = torch.compile(task.step) if runtime.compile and not task.manual else task.step
    step_fn = data_parallel(task, step_fn, runtime)

    start, history, best, best_state, stopped = 0, [], {}, None, None
    distributed.barrier()  # no rank looks for the checkpoint once rank 0 may be writing this stage's
    if checkpoint_path.is_file():
        state = checkpoint.load(checkpoint_path)
        checkpoint.load_weights(task.model, state["model"], str(checkpoint_path))
        for name, module in task.extra.items():
            checkpoint.load_weights(module, state["extra"][name], f"{checkpoint_path} (extra {name})")
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        for name, obj in task.state.items():
            obj.load_state_dict(state["state"][name])
        start, history, best = state["epoch"], state["history"], state["best"]
        best_state = state.get("best_model")
        stopped = state.get("stopped")
        if stopped:  # stopped early by a callback before the run was interrupted: it stays stopped
            start = cfg.epochs
        if distributed.is_main():
            for metrics in history:
                recorder.relog(metrics["epoch"], metrics)

    progress = Progress(runtime.progress if distributed.is_main() else "none", stage, cfg.epochs, len(train))
    try:
        for epoch in range(start, cfg.epochs):
            torch.manual_seed(distributed.rank_seed(seed_for(seed, epoch)))  # dropout and any other global draws
            for module in trainable:
                module.train()
            progress.start_epoch(epoch)
            if task.on_epoch is not None:
                task.on_epoch(epoch)
            sums: dict[str, torch.Tensor] = {}
            nonfinite = torch.zeros((), dtype=torch.int64, device=device)  # counted on the device: no sync per step
            batches, seen = 0, 0
            lr_start = optimizer.param_groups[0]["lr"] if optimizer is not None else None
            t0 = time.perf_counter()
            for x, y in train.epoch(epoch):
                if runtime.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr_now = optimizer.param_groups[0]["lr"] if optimizer is not None else None
                step_number = epoch * len(train) + batches + 1  # 1-based, over the whole fit
                with autocast(runtime):
                    loss, extra = step_fn(x, y, StepInfo(epoch, step_number)) if with_info else step_fn(x, y)
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                nonfinite += (~torch.isfinite(loss.detach())).sum()
                for key, value in {"loss": loss, **extra}.items():
                    value = value.detach().float()
                    sums[key] = sums[key] + value if key in sums else value
                batches += 1
                seen += len(y)
                if log_every_steps and step_number % log_every_steps == 0 \
                        and distributed.is_main():  # one read of the device every log_every_steps steps
                    values = {f"train/{k}": float(v.detach().float().mean())
                              for k, v in {"loss": loss, **extra}.items()}
                    if lr_now is not None:
                        values["lr"] = lr_now
                    recorder.step_metrics(step_number, values)
                progress.advance()
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            if distributed.active():
                nonfinite = distributed.all_reduce_sum(nonfinite)
            check_finite(nonfinite, batches * world, cfg.max_nonfinite_steps, stage, epoch)
            if distributed.active():  # one all-reduce per epoch: means over every rank's steps
                keys = sorted(sums)
                totals = distributed.all_reduce_sum(torch.stack([*(sums[k].to(device) for k in keys),
                                                                 torch.tensor(float(seen), device=device)]))
                sums = dict(zip(keys, totals[:-1], strict=True))
                batches, seen = batches * world, int(totals[-1].item())
                distributed.broadcast_buffers(trainable)  # rank 0's BatchNorm statistics, evaluated and saved
            metrics = {f"train/{k}": v.item() / max(batches, 1) for k, v in sums.items()}
            if optimizer is not None:  # the rate the epoch started with (a manual task reports its own)
                metrics["lr"] = lr_start
            metrics["throughput"] = seen / max(elapsed, 1e-9)
            evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
            if evaluated:
                progress.phase("evaluating")
                for name, batches_ in evals.items():
                    for key, value in evaluate(task.model, batches_, runtime).items():
                        metrics[f"{name}/{key}"] = value
            metrics["epoch"] = epoch
            history.append(metrics)
            if evaluated and is_better(metrics, best, cfg.select_on):
                best = dict(metrics)
                best_state = cpu_state(task.model) if cfg.keep == "best" else None
            progress.phase("saving checkpoint")
            if distributed.is_main():
                recorder.flush()  # the steps logged so far are in the store before the checkpoint says they ran
                checkpoint.save_atomic(
                    {
                        "model": task.model.state_dict(),
                        "extra": {k: m.state_dict() for k, m in task.extra.items()},
                        "optimizer": optimizer.state_dict() if optimizer is not None else None,
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "state": {k: obj.state_dict() for k, obj in task.state.items()},
                        "epoch": epoch + 1,
                        "history": history,
                        "best": best,
                        "best_model": best_state,
                    },
                    checkpoint_path,
                )
            progress.phase("logging")
            stopped = recorder.epoch_end(epoch, metrics)
            progress.end_epoch(epoch, metrics)
            if stopped:  # a callback ended this loop: say so in the checkpoint, so a resume does not go on
                if distributed.is_main():
                    state = checkpoint.load(checkpoint_path)
                    checkpoint.save_atomic({**state, "stopped": stopped}, checkpoint_path)
                break
    finally:
        progress.close()
    return FitResult(history=history, best=best, last=history[-1] if history else {}, best_state=best_state,
                     stopped=stopped)
