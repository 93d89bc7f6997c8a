"""Clocks for the two timed passes: step ends without host syncs, and a synchronising breakdown.

A CUDA step is queued, not run, when Python returns from it; timing its parts
means waiting for the device at every boundary, which stalls the pipeline the
fast path relies on. So the bench times twice:

- ``StepMarks`` (the throughput pass) marks the end of every step without
  waiting: a CUDA event recorded on the stream, or ``perf_counter`` on a CPU
  (where every op has finished when it returns). Consecutive marks give
  per-step times; the loop's own epoch timer gives the mean.
- ``Breakdown`` (the instrumented pass) synchronises at each boundary and
  reads ``perf_counter``: the loop's batch (data), the teacher's forward
  (forward pre/post hooks on the teacher modules and their leaves: the span
  from its first call to its last in the step), the rest of the method's
  step (student forward and loss), backward, and the optimizer step (global
  optimizer step hooks, so the loop's own optimizer is timed where it runs).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

PARTS = ("data", "teacher_forward", "student_forward", "backward", "optimizer")


class Clock:
    """``now()`` after the device has finished all queued work."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class StepMarks:
    """Marks of step ends that do not wait for the device."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        pairs = list(zip(self.marks, self.marks[1:], strict=False))
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in pairs]
        return [(b - a) * 1e3 for a, b in pairs]


class Breakdown:
    """Per-step times (ms) of the parts of a step, from synchronising boundaries.

    Call ``start()`` where the loop starts its epoch, wrap the method's step
    with ``wrap_step``, and ``install`` the hooks. For a step that optimises by
    itself (``manual``) only data, teacher forward and the whole step are
    timed: backward and optimizer then happen inside the method's step.
    """

    def __init__(self, device: torch.device, teachers: Iterable[nn.Module], manual: bool):
        self.clock = Clock(device)
        self.teachers = list(teachers)
        self.manual = manual
        self.steps: list[dict[str, float]] = []
        self._boundary = 0.0
        self._step_end = 0.0
        self._span_start = None  # the teacher's first module call in this step
        self._span_end = None  # its last
        self._handles: list = []

    # -- boundaries -----------------------------------------------------------------------
    def start(self) -> None:
        self._boundary = self.clock.now()

    def wrap_step(self, step: Callable) -> Callable:
        from ..engine.loop import takes_info

        passes = takes_info(step)

        def timed(x, y, *info):
            begin = self.clock.now()
            self._span_start = self._span_end = None
            out = step(x, y, *info) if passes else step(x, y)
            self._step_end = self.clock.now()
            teacher = self._teacher_seconds()
            current = {"data": begin - self._boundary, "teacher_forward": teacher,
                       "student_forward": self._step_end - begin - teacher}
            self.steps.append(current)
            if self.manual:
                current["total"] = self._step_end - self._boundary
                self._boundary = self._step_end
            return out

        return timed

    # The teacher's span, from its first module call to its last in the step, is stamped without
    # waiting for the device (events on CUDA): a method may run the teacher through a traced graph
    # (a feature tap), which calls the teacher's leaf modules but not its own forward.
    def _stamp(self, event=None):
        if not self.clock.cuda:
            return time.perf_counter()
        event = event or torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _teacher_pre(self, module, args) -> None:
        if self._span_start is None:
            self._span_start = self._stamp()

    def _teacher_post(self, module, args, output) -> None:
        if self.clock.cuda:  # one event, re-recorded: its last record is the span's end
            self._span_end = self._stamp(self._span_end)
        else:
            self._span_end = self._stamp()

    def _teacher_seconds(self) -> float:
        if self._span_start is None or self._span_end is None:
            return 0.0
        if self.clock.cuda:  # the step's end was synchronised: both events have completed
            return self._span_start.elapsed_time(self._span_end) / 1e3
        return self._span_end - self._span_start

    def _optimizer_pre(self, optimizer, args, kwargs) -> None:
        self._optimizer_start = self.clock.now()
        self.steps[-1]["backward"] = self._optimizer_start - self._step_end  # zero_grad + backward

    def _optimizer_post(self, optimizer, args, kwargs) -> None:
        end = self.clock.now()
        current = self.steps[-1]
        current["optimizer"] = end - self._optimizer_start
        current["total"] = end - self._boundary
        self._boundary = end

    def install(self) -> None:
        for teacher in self.teachers:  # the module itself and its leaves: what a traced graph still calls
            leaves = (m for m in teacher.modules() if next(m.children(), None) is None)
            for module in dict.fromkeys([teacher, *leaves]):
                self._handles.append(module.register_forward_pre_hook(self._teacher_pre))
                self._handles.append(module.register_forward_hook(self._teacher_post))
        if not self.manual:
            from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

            self._handles.append(register_optimizer_step_pre_hook(self._optimizer_pre))
            self._handles.append(register_optimizer_step_post_hook(self._optimizer_post))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- results ---------------------------------------------------------------------------
    def mean_ms(self) -> dict[str, float | None]:
        """Mean per part over the steps, in ms; ``None`` for a part this kind of step cannot time."""
        out: dict[str, float | None] = {}
        for part in PARTS:
            values = [s[part] for s in self.steps if part in s]
            if self.manual and part in ("student_forward", "backward", "optimizer"):
                out[part] = None
            else:
                out[part] = 1e3 * statistics.fmean(values) if values else None
        return out

    def step_ms(self) -> list[float]:
        return [1e3 * s["total"] for s in self.steps if "total" in s]
