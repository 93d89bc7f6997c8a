"""Meta Pseudo Labels (Pham et al. 2021): a teacher that learns from how its labels teach.

One step (``MetaPseudoLabels.step``):

1. the teacher scores an unlabeled batch in two views, weak (flip + crop) and
   strong (``strong_augment``: RandAugment + Cutout, ``mentor.data.strong_augment``),
   plus the labeled batch when UDA is on;
2. pseudo-labels come from its logits on one view (``label_view``): a class
   sampled from its softmax, its argmax, or the softmax itself (``labels``);
3. the student takes one optimizer step on the strong view with those labels;
4. the teacher gets the student's feedback: its loss on the labeled batch
   before (L_old) and after (L_new) that step, both measured with the same
   dropout masks and without touching BatchNorm statistics (``same_noise``),
   so that they differ by the step alone. With hard labels the teacher's
   MPL term is ``h * CE(label, teacher logits)`` with ``h = L_old - L_new``
   (minus a moving ``baseline``): REINFORCE on the student's post-step
   labeled loss. With soft labels it is the first-order change of L_new as a
   function of the teacher's soft target q, ``L_old - lr g . grad_theta CE(q, S)``
   with ``g`` the labeled-loss gradient before the step, differentiated through ``q``
   (``directional_log_probs`` gives ``g . grad_theta log S``);
5. with ``uda:`` the teacher also learns from the labeled batch (CE) and from
   UDA consistency (Xie et al. 2020); with ``ema_decay`` an EMA of the student
   is evaluated and exported; ``finetune:`` then trains the exported student
   on the labeled data alone.

What the references do, and what the options here mean (tests/test_mpl.py
checks the sign, ``sampled``/``soft`` labels, both views and the baseline
against an exact gradient through the student's step):

- ``feedback_sign``. The paper's appendix derives the teacher gradient
  ``h * grad_T CE(y_hat, T(x_u))`` with ``h = lr * grad L_l(theta') . grad
  CE(y_hat, S(x_u; theta))``, which to first order is ``L_old - L_new``:
  positive when the student improved, and descending ``h * CE`` then makes
  that label more likely. ``old_minus_new`` (default) is that. The official
  code (google-research meta_pseudo_labels/training_utils.py, ``MPL.step_fn``)
  writes ``dot_product = L_new - L_old``; kekmodel/MPL-pytorch keeps that as
  "author's code formula" with ``L_old - L_new`` as "theoretically correct"
  in a comment (its issue #6). ``new_minus_old`` reproduces them: the teacher
  then ascends the student's labeled loss (tests/test_mpl.py measures it).
- ``baseline``. ``ema``: subtract a moving average of ``h`` (``baseline_decay``;
  the official code uses 0.99 and folds the current ``h`` in before
  subtracting; here the average of *earlier* steps is subtracted, which keeps
  the estimator unbiased). kekmodel's current code has it commented out;
  an earlier version started it at a random value (and detached the
  teacher's logits in its MPL term: no gradient at all). Soft labels need
  none: q sums to 1, so a constant added to every class's coefficient
  leaves their term's gradient unchanged.
- ``labels``. ``sampled`` (default): a class drawn from the teacher's softmax,
  as in the paper's derivation; unbiased: the expected MPL update equals the
  exact gradient of the expected post-step labeled loss, at any learning rate.
  ``argmax``: kekmodel's choice; deterministic, so there is no gradient it
  estimates (the exact derivative is zero almost everywhere): a heuristic.
  ``soft``: the official code's choice (student on softmax of the strong
  view). There its MPL term is ``CE(stop_grad(softmax(t)), t)``, whose gradient
  w.r.t. ``t`` is ``softmax(t) - softmax(t) = 0``: the teacher never gets the
  student's feedback. Here the soft term differentiates the student's loss on
  the soft target w.r.t. the teacher (through the target), so it carries
  gradient and matches the exact one to first order in the student's lr.
- ``label_view``. ``strong`` (default; official code): labels from the
  teacher's logits on the strong view, the images the student learns from.
  ``weak``: from the weak view (kekmodel takes the student's label from the
  weak view but its MPL term from the strong view's argmax, a mismatch not
  offered here: the MPL term always uses the logits that made the labels).
- ``student_wait_steps``: for the first N steps the student does not learn
  (the references keep its learning rate at 0: ``mpl_student_lr_wait_steps``,
  kekmodel ``--student-wait-steps 3000``; here its step is skipped), so there
  is no feedback and no MPL term: the teacher learns from its UDA terms only
  (nothing, without ``uda``). The student's schedule starts after the wait.

Logged per epoch (means over steps, under ``train/``): ``mpl/h`` (L_old -
L_new), ``mpl/baseline``, ``mpl/feedback`` (the coefficient used: signed, minus
the baseline), ``teacher/loss`` and its terms ``teacher/loss/mpl``, ``/uda``,
``/labeled_ce``, ``uda/mask_rate``, ``uda/weight``, ``student/loss/pseudo``,
``student/labeled_loss/old`` and ``/new``, ``pseudo/confidence``, learning
rates. Methods never see the unlabeled split's labels, so pseudo-label
accuracy is measured in the core: every ``teacher_accuracy_every`` epochs the
teacher scores (un-augmented) ``teacher_accuracy_images`` unlabeled images and
``ctx.pseudo_label_diagnostics`` gives ``pseudo/teacher_accuracy`` (logged at
the start of the next epoch with the finished epoch's step, and after the last).

Under torchrun each rank takes its shard of the labeled and of the unlabeled
batch; the step averages over ranks what one process would compute on the
whole batch: both models' gradients, ``L_old`` and ``L_new`` (so ``h`` and the
baseline are the global batch's) and, for soft labels, the gradient ``g``.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Literal

import polars as pl
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mentor import (
    MAX_MAGNITUDE,
    BatchAugment,
    Batches,
    ModelKey,
    OptimizerConfig,
    Params,
    StageContext,
    StageName,
    StageResult,
    StrongAugment,
    TrainingConfig,
    TrainingStageConfig,
    TrainTask,
    UnlabeledImages,
    build_optimizer,
    build_scheduler,
    derive_seed,
    distributed,
    hookimpl,
    lr_factor,
)

# --- configuration ------------------------------------------------------------------


class UDAConfig(Params):
    """UDA on the teacher (Xie et al. 2020), as in the MPL recipe: labeled CE + weighted consistency."""

    threshold: float = Field(default=0.6, ge=0, le=1,
                             description="keep unlabeled images whose sharpened weak-view confidence is >= this")
    temperature: float = Field(default=0.7, gt=0, description="sharpening of the weak-view target")
    weight: float = Field(default=8.0, ge=0, description="weight of the consistency term after the ramp")
    ramp_steps: int = Field(default=5000, ge=0, description="the weight ramps linearly to `weight` over these steps")
    labeled_weight: float = Field(default=1.0, ge=0, description="weight of the teacher's labeled cross-entropy")


class StrongAugmentConfig(Params):
    """The strong view: the stage's crop/flip, then RandAugment(num_ops, magnitude), then Cutout."""

    num_ops: int = Field(default=2, ge=0, description="RandAugment ops per image")
    magnitude: float = Field(default=16, ge=0, le=MAX_MAGNITUDE, description="op strength on the 0-30 scale")
    cutout: float = Field(default=0.5, ge=0, le=1, description="cutout square side / image side (0 = off)")


class MPLStage(TrainingStageConfig):
    """Meta Pseudo Labels: teacher and student trained together, one step each per batch.

    The stage's training fields drive the student: ``batch_size`` is the
    labeled batch, ``epochs`` count passes over the labeled split (one step
    per labeled batch), ``optimizer``/``schedule``/``label_smoothing`` are the
    student's (the teacher shares the schedule and smoothing, and has
    ``teacher_optimizer``). See the module docstring for the options.
    """

    student: ModelKey = Field(description="a key of `models`: the student's architecture (exported)")
    teacher: ModelKey = Field(description="a key of `models`: the teacher's architecture")
    init: StageName | None = Field(default=None, description="start the student from this stage's weights")
    teacher_init: StageName | None = Field(default=None, description="start the teacher from this stage's weights")
    unlabeled_ratio: int = Field(default=7, ge=1, description="unlabeled images per labeled image in a step")
    labels: Literal["sampled", "argmax", "soft"] = Field(
        default="sampled",
        description="sampled: a class drawn from the teacher's softmax (paper's derivation; unbiased); "
        "argmax: the teacher's top class (kekmodel/MPL-pytorch; a heuristic); "
        "soft: the teacher's softmax (official code, whose MPL gradient is zero; here exact to first order)")
    label_view: Literal["strong", "weak"] = Field(
        default="strong", description="the view whose teacher logits make the pseudo-labels (and the MPL term)")
    feedback_sign: Literal["old_minus_new", "new_minus_old"] = Field(
        default="old_minus_new",
        description="old_minus_new: h = L_old - L_new, the paper's first-order feedback (descends the student's "
        "labeled loss); new_minus_old: the official code's and kekmodel's sign (ascends it)")
    baseline: Literal["none", "ema"] = Field(
        default="ema", description="subtract a moving average of h (hard labels; variance reduction, no bias)")
    baseline_decay: float = Field(default=0.99, ge=0, lt=1, description="decay of the moving baseline")
    student_wait_steps: int = Field(
        default=0, ge=0, description="steps before the student learns; no MPL term until then")
    uda: UDAConfig | None = Field(default=None, description="MPL + UDA: the teacher also learns from labels and UDA")
    ema_decay: float | None = Field(
        default=None, gt=0, lt=1, description="evaluate and export an EMA of the student (e.g. 0.995)")
    strong_augment: StrongAugmentConfig = Field(default_factory=StrongAugmentConfig)
    teacher_optimizer: OptimizerConfig | None = Field(default=None, description="defaults to the stage's optimizer")
    finetune: TrainingConfig | None = Field(default=None, description="then train the student on labeled data only")
    teacher_accuracy_every: int = Field(
        default=1, ge=0, description="log pseudo/teacher_accuracy every n epochs (0 = only after training)")
    teacher_accuracy_images: int | None = Field(
        default=5000, ge=1, description="unlabeled images scored for it (a fixed random subset; null = all)")
    score_batch_size: int = Field(default=1024, ge=1)


# --- the algorithm ------------------------------------------------------------------------


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Logits from autocast (bf16/fp16) to float32 for the losses; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def smooth(target: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing of a target distribution [B, C]."""
    return target if eps == 0 else target * (1 - eps) + eps / target.shape[1]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * logits.log_softmax(1)).sum(1).mean()


def uda_consistency(weak: torch.Tensor, strong: torch.Tensor, temperature: float,
                    threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """UDA's term and mask: KL(sharpened weak-view target || strong-view prediction), confident rows only.

    The target is ``softmax(weak / temperature)`` without gradient; rows whose
    target's top probability is below ``threshold`` count as zero in the
    batch mean (UDA and both MPL codes; their cross-entropy differs from this
    KL by the target's entropy, a constant: same gradient).
    """
    target = (weak.detach() / temperature).softmax(1)
    mask = (target.amax(1) >= threshold).to(strong.dtype)
    kl = (target * (target.clamp_min(1e-12).log() - strong.log_softmax(1))).sum(1)
    return (kl * mask).mean(), mask


def directional_log_probs(log_p: torch.Tensor, params: list[torch.Tensor],
                          direction: list[torch.Tensor]) -> torch.Tensor:
    """``J @ direction`` for ``J = d log_p / d params``: how each log-probability moves along ``direction``.

    Forward-mode by the double-vjp trick (``u -> J^T u`` is linear in ``u``,
    so the gradient of ``<J^T u, direction>`` w.r.t. ``u`` is ``J direction``);
    works with any module, BatchNorm included. ``log_p``'s graph is kept for
    the caller's backward.
    """
    u = torch.zeros_like(log_p, requires_grad=True)
    vjp = torch.autograd.grad(log_p, params, grad_outputs=u, create_graph=True, allow_unused=True)
    dot = sum((v * d).sum() for v, d in zip(vjp, direction, strict=True) if v is not None)
    return torch.autograd.grad(dot, u)[0].detach()


@contextlib.contextmanager
def same_noise(model: nn.Module, seed: int):
    """Dropout masks from ``seed`` and BatchNorm running statistics untouched.

    The student's labeled loss is measured before and after its step under
    this, so the two forwards differ only by the step: different dropout
    masks would add noise far larger than the step's effect to ``h``.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in norms:
            m.momentum = 0.0  # running = 1 * running + 0 * batch
        try:
            yield
        finally:
            for m, momentum in zip(norms, saved, strict=True):
                m.momentum = momentum


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for parameters; buffers (BN statistics) copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


class Counters:
    """The step count and the moving baseline of h: checkpointed with the loop's state."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.step = 0
        self.baseline = torch.zeros((), device=device)

    def state_dict(self) -> dict:
        return {"step": self.step, "baseline": self.baseline.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.baseline = state["baseline"].to(self.baseline.device)


STUDENT_METRICS = ("student/loss/pseudo", "student/labeled_loss/old", "student/labeled_loss/new", "mpl/h",
                   "mpl/feedback", "pseudo/confidence")


class MetaPseudoLabels:
    """Teacher and student, their optimizers and the step (see the module docstring).

    ``losses`` updates the student and returns the teacher's loss terms with
    their graphs (tests read their gradients there); ``step`` also updates the
    teacher and advances the schedules.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, teacher_optimizer, student_optimizer,
                 options: MPLStage, *, ema: nn.Module | None = None, teacher_schedule=None,
                 student_schedule=None, device: torch.device | str = "cpu"):
        self.teacher, self.student, self.ema = teacher, student, ema
        self.teacher_optimizer, self.student_optimizer = teacher_optimizer, student_optimizer
        self.teacher_schedule, self.student_schedule = teacher_schedule, student_schedule
        self.options = options
        self.device = torch.device(device)
        self.counters = Counters(self.device)
        self.reseed(0)

    def reseed(self, seed: int) -> None:
        """Seed the label draws and the dropout seeds of the measurements (once per epoch)."""
        self.generator = torch.Generator(device=self.device).manual_seed(derive_seed(seed, "labels"))
        self.noise = torch.Generator().manual_seed(derive_seed(seed, "noise"))

    def pseudo_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Hard labels [B] from the teacher's logits (``sampled`` or ``argmax``)."""
        if self.options.labels == "sampled":
            return torch.multinomial(logits.detach().softmax(1), 1, generator=self.generator).squeeze(1)
        return logits.detach().argmax(1)

    def losses(self, x_l: torch.Tensor, y_l: torch.Tensor, x_uw: torch.Tensor, x_us: torch.Tensor,
               labels: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One student step; the teacher's loss terms (with graphs) and the step's metrics.

        ``labels`` forces the hard pseudo-labels (tests enumerate them).
        """
        opt = self.options
        terms: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        learning = self.counters.step >= opt.student_wait_steps
        views = {"strong": x_us, "weak": x_uw}
        parts = ([x_l, x_uw, x_us] if opt.uda is not None
                 else [views[opt.label_view]] if learning else [])
        if parts:
            logits = _f32(self.teacher(torch.cat(parts))).split([len(p) for p in parts])
            if opt.uda is not None:
                t_l, t_uw, t_us = logits
                source = t_us if opt.label_view == "strong" else t_uw
                terms["labeled_ce"] = opt.uda.labeled_weight * F.cross_entropy(
                    t_l, y_l, label_smoothing=opt.label_smoothing)
                consistency, mask = uda_consistency(t_uw, t_us, opt.uda.temperature, opt.uda.threshold)
                ramp = min(1.0, (self.counters.step + 1) / opt.uda.ramp_steps) if opt.uda.ramp_steps else 1.0
                terms["uda"] = opt.uda.weight * ramp * consistency
                metrics.update({"uda/mask_rate": mask.mean().detach(), "uda/consistency": consistency.detach(),
                                "uda/weight": torch.tensor(opt.uda.weight * ramp)})
            else:
                source = logits[0]
        if learning:
            mpl, student_metrics = self._student_step(x_l, y_l, x_us, source, labels)
            terms["mpl"] = mpl
            metrics.update(student_metrics)
        else:
            zero = torch.zeros((), device=x_l.device)
            metrics.update({k: zero for k in STUDENT_METRICS})  # zeros while the student waits
        metrics["mpl/baseline"] = self.counters.baseline.detach().clone()
        return terms, metrics

    def _student_step(self, x_l, y_l, x_us, source, labels):
        opt = self.options
        soft = opt.labels == "soft"
        probs = source.detach().softmax(1)
        if soft:
            target = probs
        else:
            labels = self.pseudo_labels(source) if labels is None else labels
            target = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
        seed = int(torch.randint(2**62, (1,), generator=self.noise))
        params = [p for p in self.student.parameters() if p.requires_grad]

        with same_noise(self.student, seed), torch.set_grad_enabled(soft):
            old = F.cross_entropy(_f32(self.student(x_l)), y_l)
        if soft:
            grad_old = torch.autograd.grad(old, params, allow_unused=True)
            grad_old = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grad_old, strict=True)]
            distributed.average_tensors(grad_old)  # g of the whole labeled batch under torchrun
            old = old.detach()
        log_p = _f32(self.student(x_us)).log_softmax(1)
        pseudo_loss = -(smooth(target, opt.label_smoothing) * log_p).sum(1).mean()
        along = directional_log_probs(log_p, params, grad_old) if soft else None
        lr = self.student_optimizer.param_groups[0]["lr"]
        self.student_optimizer.zero_grad(set_to_none=True)
        pseudo_loss.backward()
        distributed.average_gradients(self.student)
        self.student_optimizer.step()
        if self.ema is not None:
            ema_update(self.ema, self.student, opt.ema_decay)
        with same_noise(self.student, seed), torch.no_grad():
            new = F.cross_entropy(_f32(self.student(x_l)), y_l)
        old, new = old.detach().clone(), new.clone()
        distributed.average_tensors([old, new])  # the whole labeled batch's losses under torchrun

        h = old - new  # the paper's first-order feedback: > 0 when the step helped
        signed = h if opt.feedback_sign == "old_minus_new" else -h
        if soft:
            # L_new ~ L_old - lr * g . grad_theta CE(q, S) = L_old + lr * mean_i sum_c q_ic (g . grad log s_ic):
            # minimising it through the teacher's soft target q is the first-order MPL gradient.
            sign = 1.0 if opt.feedback_sign == "old_minus_new" else -1.0
            q = smooth(source.softmax(1), opt.label_smoothing)
            mpl = sign * lr * (q * along).sum(1).mean()
            feedback = signed
        else:
            feedback = signed - self.counters.baseline if opt.baseline == "ema" else signed
            if opt.baseline == "ema":
                decay = opt.baseline_decay
                self.counters.baseline = decay * self.counters.baseline + (1 - decay) * signed.detach()
            mpl = feedback.detach() * F.cross_entropy(source, labels)
        metrics = {
            "student/loss/pseudo": pseudo_loss.detach(), "student/labeled_loss/old": old.detach(),
            "student/labeled_loss/new": new.detach(), "mpl/h": h.detach(), "mpl/feedback": feedback.detach(),
            "pseudo/confidence": probs.amax(1).mean(),
        }
        return mpl, metrics

    def step(self, x_l, y_l, x_uw, x_us, labels=None) -> dict[str, torch.Tensor]:
        """A full MPL step: student, then teacher, then both schedules; returns metrics."""
        metrics = {"lr/teacher": torch.tensor(self.teacher_optimizer.param_groups[0]["lr"]),
                   "lr/student": torch.tensor(self.student_optimizer.param_groups[0]["lr"])}
        terms, step_metrics = self.losses(x_l, y_l, x_uw, x_us, labels)
        metrics.update(step_metrics)
        self.teacher_optimizer.zero_grad(set_to_none=True)
        if terms:
            total = sum(terms.values())
            if total.requires_grad:
                total.backward()
                distributed.average_gradients(self.teacher)
            metrics["teacher/loss"] = total.detach()
            metrics.update({f"teacher/loss/{k}": v.detach() for k, v in terms.items()})
        self.teacher_optimizer.step()  # a no-op without gradients (plain MPL while the student waits)
        if "mpl" not in terms:  # the student waited: keep its optimizer's step count in line with its schedule
            self.student_optimizer.zero_grad(set_to_none=True)
            self.student_optimizer.step()
        for schedule in (self.teacher_schedule, self.student_schedule):
            if schedule is not None:
                schedule.step()
        self.counters.step += 1
        return metrics

    def state(self) -> dict:
        """What the loop checkpoints besides the models."""
        state = {"teacher_optimizer": self.teacher_optimizer, "student_optimizer": self.student_optimizer,
                 "counters": self.counters}
        if self.teacher_schedule is not None:
            state["teacher_schedule"] = self.teacher_schedule
        if self.student_schedule is not None:
            state["student_schedule"] = self.student_schedule
        return state


# --- data: the unlabeled batches in two views ---------------------------------------------


class UnlabeledFeed:
    """Unlabeled batches of ``batch_size``, weak and strong view of the same images.

    Epoch ``e`` draws its order and augmentations from ``(seed, e)`` alone (as
    ``Batches`` does), so a resumed run gets the same batches. When an epoch
    needs more batches than the unlabeled split holds, a new permutation starts.
    """

    def __init__(self, data: UnlabeledImages, batch_size: int, weak: BatchAugment, strong: StrongAugment, *,
                 mean, std, device, seed: int):
        self.batches = Batches(data, max(1, min(batch_size, len(data))), shuffle=True, mean=mean, std=std,
                               device=device, seed=seed)
        self.weak, self.strong = weak, strong
        self.seed, self.device = seed, torch.device(device)
        self.start(0)

    def start(self, epoch: int) -> None:
        self.epoch, self.round, self.position = epoch, 0, 0
        self.order = self.batches.order(epoch * 100_000)
        seed = distributed.rank_seed(derive_seed(self.seed, "views", epoch))
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        world = distributed.world_size()
        span = self.batches.batch_size * world  # under torchrun, each rank takes its shard of the global batch
        if self.position > 0 and self.position + span > len(self.order):
            self.round += 1
            self.position = 0
            self.order = self.batches.order(self.epoch * 100_000 + self.round)
        rows = distributed.shard(self.order[self.position:self.position + span], distributed.group_rank(), world)
        self.position += span
        images = self.batches.images[rows].to(self.device, non_blocking=True)  # a no-op for a set held there
        weak = self.weak(images, self.generator) if self.weak.active else images
        strong = self.strong(images, self.generator)
        return self.batches.normalise(weak), self.batches.normalise(strong)


# --- the stage ----------------------------------------------------------------------------


def _student_schedule(optimizer, stage: MPLStage, steps_per_epoch: int):
    """The stage's schedule for the student, starting after ``student_wait_steps`` (lr 0 until then)."""
    wait = stage.student_wait_steps
    epochs = max(stage.epochs - wait / max(steps_per_epoch, 1), 1e-8)

    def factor(step: int) -> float:
        if step < wait:
            return 0.0
        return lr_factor(stage.schedule, step - wait, steps_per_epoch, epochs, stage.optimizer.lr)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _teacher_accuracy(ctx: StageContext, stage: MPLStage, teacher: nn.Module,
                      rows: torch.Tensor | None) -> dict[str, float]:
    """Top-1 accuracy and mean confidence of the teacher on unlabeled images, from the core's diagnostics."""
    data = ctx.splits.unlabeled if rows is None else ctx.splits.unlabeled.subset(rows)
    was_training = teacher.training
    scores = ctx.score(teacher, data, top_p=1, batch_size=stage.score_batch_size)
    teacher.train(was_training)
    selection = scores.select("index", pl.col("class").alias("label"), "prob", "rank")
    metrics, _ = ctx.pseudo_label_diagnostics(scores, selection)
    return {"pseudo/teacher_accuracy": metrics["pseudo/teacher_accuracy"],
            "pseudo/teacher_confidence": metrics["pseudo/mean_confidence"]}


def run_mpl(stage: MPLStage, ctx: StageContext) -> StageResult:
    unlabeled = ctx.splits.unlabeled
    if len(unlabeled) == 0:
        raise ValueError(f"stage '{stage.name}': the unlabeled split is empty; set data.labeled_per_class")
    device = ctx.device
    teacher = ctx.build_model(stage.teacher, init=stage.teacher_init).to(device)
    student = ctx.build_model(stage.student, init=stage.init).to(device)
    labeled = ctx.training_data()
    global_batch = stage.batch_size * distributed.world_size()  # the loop's steps per epoch under torchrun
    steps_per_epoch = len(labeled) // global_batch if len(labeled) > global_batch else 1

    teacher_cfg = stage.teacher_optimizer or stage.optimizer
    teacher_optimizer = build_optimizer(teacher.parameters(), teacher_cfg, device)
    student_optimizer = build_optimizer(student.parameters(), stage.optimizer, device)
    teacher_schedule = build_scheduler(teacher_optimizer, stage.schedule, steps_per_epoch, stage.epochs,
                                       teacher_cfg.lr)
    student_schedule = _student_schedule(student_optimizer, stage, steps_per_epoch)
    ema = copy.deepcopy(student).requires_grad_(False) if stage.ema_decay else None
    mpl = MetaPseudoLabels(teacher, student, teacher_optimizer, student_optimizer, stage, ema=ema,
                           teacher_schedule=teacher_schedule, student_schedule=student_schedule, device=device)

    augment = ctx.augment_config()
    strong = StrongAugment(stage.strong_augment.num_ops, stage.strong_augment.magnitude, stage.strong_augment.cutout,
                           augment.crop_padding, augment.flip)
    feed = UnlabeledFeed(unlabeled, stage.batch_size * stage.unlabeled_ratio,
                         BatchAugment(augment.crop_padding, augment.flip), strong,
                         mean=ctx.info.mean, std=ctx.info.std, device=device, seed=derive_seed(ctx.seed, "unlabeled"))
    channels_last = ctx.runtime.channels_last

    rows = None
    if stage.teacher_accuracy_images is not None and stage.teacher_accuracy_images < len(unlabeled):
        g = torch.Generator().manual_seed(derive_seed(ctx.experiment.data.split_seed, "mpl-teacher-accuracy"))
        rows = torch.randperm(len(unlabeled), generator=g)[:stage.teacher_accuracy_images]
    trained = {"epochs": 0}

    def on_epoch(epoch: int) -> None:
        every = stage.teacher_accuracy_every
        if epoch > 0 and every and epoch % every == 0:
            ctx.log_metrics(_teacher_accuracy(ctx, stage, teacher, rows), step=epoch - 1)
        feed.start(epoch)
        mpl.reseed(distributed.rank_seed(derive_seed(ctx.seed, "mpl", epoch)))
        trained["epochs"] += 1

    def step(x, y):
        x_uw, x_us = feed.next()
        if channels_last:
            x_uw = x_uw.contiguous(memory_format=torch.channels_last)
            x_us = x_us.contiguous(memory_format=torch.channels_last)
        metrics = mpl.step(x, y, x_uw, x_us)
        return metrics["student/loss/pseudo"], metrics

    extra = {"teacher": teacher} | ({"student": student} if ema is not None else {})
    task = TrainTask(model=ema if ema is not None else student, step=step, data=labeled, extra=extra,
                     on_epoch=on_epoch, manual=True, state=mpl.state(), averages_gradients=True)
    result = ctx.fit(task, stage.student, phase="mpl" if stage.finetune else None,
                     export=stage.finetune is None)
    if trained["epochs"]:  # this fit trained (not a finished phase skipped on resume)
        ctx.log_metrics(_teacher_accuracy(ctx, stage, teacher, rows), step=stage.epochs - 1)
    if stage.finetune is not None:
        result = fine_tune(ctx, stage, task.model)
    return result


def fine_tune(ctx: StageContext, stage: MPLStage, model: nn.Module) -> StageResult:
    """The recipe's last phase: the (EMA) student on the labeled data alone."""
    cfg = stage.finetune
    model.requires_grad_(True)  # the EMA copy was kept out of autograd
    return ctx.fit(ctx.supervised_task(model, cfg), stage.student, cfg, phase="finetune", step_offset=stage.epochs)


@hookimpl
def register_methods(register):
    register("mpl", run_mpl, params=MPLStage,
             description="Meta Pseudo Labels: a teacher labels unlabeled batches and learns from the student's "
             "feedback (options: UDA, EMA student, fine-tune)")
