"""``mentor bench``: time each training stage's real step, and say where the time goes.

``run_bench`` builds each chosen stage exactly as ``mentor run`` would (its
method, its models, its data, the engine's settings) in bench mode
(``context``), and measures the task the method hands the loop
(``measure``): images per second, step time, a breakdown of the step, peak
memory, FLOPs per step and MFU. Nothing is recorded in MLflow and no
checkpoint outlives the bench. The report's schema is in docs/benchmarks.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .context import BenchContext, BenchError, Measured, bench_state
from .device import describe
from .measure import measure_task
from .report import build_report, dumps, render


def run_bench(experiment, plugins, *, config: str | Path = "", steps: int = 20, warmup: int = 5,
              stages: list[str] | None = None, peak_tflops: float | None = None) -> dict:
    """Measure the chosen stages (default: all) of ``experiment``; the report as a dict."""
    if steps < 1 or warmup < 0:
        raise BenchError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    names = [s.name for s in experiment.stages]
    if stages:
        from ..registry import unknown_name_message

        for name in stages:
            if name not in names:
                raise BenchError(unknown_name_message("stage", name, names))
    chosen = [i for i, s in enumerate(experiment.stages) if not stages or s.name in stages]
    with tempfile.TemporaryDirectory(prefix="mentor-bench-") as workdir:
        state = bench_state(experiment, plugins, Path(workdir))
        device = describe(state.runtime.device, peak_tflops)
        peak = device["peak_tflops"]
        results = []
        for index in chosen:
            stage = experiment.stages[index]

            def measure(ctx, task, cfg):
                return measure_task(ctx, task, cfg, steps=steps, warmup=warmup, peak_tflops=peak)

            rows = max(steps, warmup, 1) * getattr(stage, "batch_size", 1)
            ctx = BenchContext(state, index, measure, rows)
            method = plugins.registry.get("method", stage.kind)
            try:
                method.factory(stage, ctx)
            except Measured as done:
                results.append({**done.figures, "teacher_cache": ctx.cache})
                continue
            raise BenchError(f"stage '{stage.name}' ({stage.kind}) finished without calling the training loop: "
                             "nothing to measure")
    return build_report(config, experiment, state.runtime, device, steps, warmup, results)


__all__ = ["BenchError", "dumps", "render", "run_bench"]
