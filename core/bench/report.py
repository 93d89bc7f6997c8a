"""The bench's report: the JSON document and its terminal table."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch

from ..version import __version__
from .timing import PARTS

SCHEMA_VERSION = 1


def build_report(config: str | Path, experiment, runtime, device_info: dict, steps: int, warmup: int,
                 stages: list[dict]) -> dict:
    """The whole report (schema in docs/benchmarks.md)."""
    return {
        "schema": SCHEMA_VERSION,
        "mentor": __version__,
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": str(config),
        "experiment": experiment.name,
        "device": device_info,
        "engine": {
            "precision": "bf16" if runtime.autocast_dtype == torch.bfloat16 else "fp32",
            "channels_last": runtime.channels_last,
            "compile": runtime.compile,
        },
        "steps": steps,
        "warmup": warmup,
        "stages": stages,
    }


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(report: dict) -> str:
    """A plain-text table: one row per stage, throughput first, then where the step's time goes."""
    device = report["device"]
    engine = report["engine"]
    lines = [
        f"mentor bench {report['config']}: {device['name']} ({device['type']}), torch {report['torch']}, "
        f"{engine['precision']}, channels_last={engine['channels_last']}, compile={engine['compile']}, "
        f"{report['steps']} steps after {report['warmup']} warm-up",
    ]
    head = (f"{'stage':<16} {'kind':<8} {'batch':>5} {'img/s':>9} {'step ms':>8} {'median':>8} | "
            + " ".join(f"{p[:9]:>9}" for p in (*PARTS, "other"))
            + f" | {'GFLOP/step':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak MB':>8}")
    lines += [head, "-" * len(head)]
    for s in report["stages"]:
        parts = " ".join(f"{_ms(s['breakdown_ms'][p]):>9}" for p in (*PARTS, "other"))
        mfu = "-" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%"
        tflops = "-" if s["achieved_tflops"] is None else f"{s['achieved_tflops']:.3f}"
        lines.append(
            f"{s['stage']:<16.16} {s['kind']:<8.8} {s['batch_size']:>5} {s['images_per_second']:>9.1f} "
            f"{s['step_ms']['mean']:>8.2f} {s['step_ms']['median']:>8.2f} | {parts} | "
            f"{s['flops_per_step'] / 1e9:>10.3f} {tflops:>8} {mfu:>6} {s['peak_memory_bytes'] / 2**20:>8.0f}"
        )
    lines.append("breakdown: a separate pass that synchronises at every part (its step: "
                 + ", ".join(f"{s['stage']} {s['instrumented_step_ms']['mean']:.2f} ms, "
                             f"loop overhead {100 * s['overhead']['loop_fraction']:.1f}%"
                             for s in report["stages"]) + ")")
    for s in report["stages"]:
        cache = s.get("teacher_cache")
        if cache:
            lines.append(f"{s['stage']}: the teacher's outputs read from a teacher cache ({cache['views']} view(s) of "
                         f"the {cache['images']:,} images the steps reach, built in {cache['build_seconds']:.1f} s "
                         "before timing): no teacher forward in the step")
    kinds = {s["peak_memory_kind"] for s in report["stages"]}
    if "process_peak_rss" in kinds:
        lines.append("peak MB on a CPU: the process's peak resident memory (data included), not the stage's")
    return "\n".join(lines)
