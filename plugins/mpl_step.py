"""One Meta Pseudo Labels step: teacher and student, their optimizers, the feedback (see docs/mpl.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mentor import (
    derive_seed,
    distributed,
)

from .consistency import ema_update
from .mpl_config import MPLStage
from .mpl_terms import _f32, directional_log_probs, same_noise, smooth, uda_consistency


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
    """Teacher and student, their optimizers and the step (see docs/mpl.md).

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


