"""Every GPU figure docs/benchmarks.md lists as not yet measured, in one command: one JSON, one table.

    python experiments/benchmarks/gpu_suite.py [--out gpu_suite.json] [--workdir DIR] [--only NAME ...]
    python experiments/benchmarks/gpu_suite.py --dry-run      # tiny sizes on the CPU: the suite still runs

On one H100/H200 it runs, one after the other (nothing else should use the
machine): the KD step in mentor's fast path at batch 64 and 256 (images/s,
step ms, MFU, breakdown and loop overhead), the same step in the plain
PyTorch loop (fp32, then bf16 + channels_last), the fast path compiled, the
KD step with host data placement against device placement, the KD step reading
its teacher's outputs from a teacher cache (4 views) against running the
teacher, the MPL step of
the CIFAR-10 recipe, and a Fashion-MNIST teacher's time to 94% test accuracy
(Fashion-MNIST must be on the machine: its .gz files under
$MENTOR_FASHION_MNIST_DIR, or Debian's dataset-fashion-mnist). These are the
numbered commands of docs/benchmarks.md's GPU section; each runs as its own
process with a time limit, so one failure is reported in the table and the
rest still run.

``--dry-run`` runs the same commands with tiny models, images and step
counts on the CPU (random images instead of Fashion-MNIST), so that CI keeps
the suite working; its figures mean nothing and the table says so.
Prints a markdown table (figure, value) and writes every raw result to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KD = str(ROOT / "experiments/benchmarks/kd_resnet32x4_resnet8x4.yaml")
MPL = str(ROOT / "experiments/cifar10/mpl_4000_labels.yaml")
FASHION = str(ROOT / "experiments/benchmarks/fashion_teacher_94.yaml")
STEPS = ["--steps", "50", "--warmup", "10"]
CACHED = "stages[2].teacher_cache={views: 4}"  # kd_b256 reads its teacher's outputs from a cache of 4 views

# the dry run: small CNNs on 8x8 random images, two timed steps, the CPU
TINY_MODELS = ["--set", "models.teacher={name: small_cnn, params: {channels: [8]}}",
               "--set", "models.student={name: small_cnn, params: {channels: [4]}}"]
TINY_KD = [*TINY_MODELS, "--set", "data.params.train_size=512", "--set", "data.params.image_size=8",
           "--set", "data.params.test_size=64", "--set", "engine.device=cpu"]
TINY_STEPS = ["--steps", "2", "--warmup", "1"]


@dataclass
class Step:
    """One command of the suite; ``dry`` replaces its sizing arguments in a dry run."""

    name: str
    argv: list[str]
    dry: list[str]
    out: str | None = None  # the JSON file the command writes (else: its stdout is the JSON)
    timeout_s: int = 240
    env: dict[str, str] = field(default_factory=dict)


def mentor(*args: str) -> list[str]:
    return [sys.executable, "-m", "mentor.cli", *args]


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / script), *args]


def steps() -> list[Step]:
    plain = "experiments/benchmarks/plain_kd.py"
    tiny_plain = ["--images", "256", "--image-size", "8", "--classes", "10", "--teacher", "small_cnn",
                  "--student", "small_cnn", "--steps", "2", "--warmup", "1", "--workers", "0", "--device", "cpu"]
    fashion_tiny = ["--set", "data.source=random_images",
                    "--set", "data.params={train_size: 1024, test_size: 256, num_classes: 10, channels: 1, "
                    "image_size: 28}", "--set", "data.val_size=128", "--set", "stages[0].epochs=1",
                    "--set", "models.teacher={name: small_cnn, params: {channels: [4]}}",
                    "--set", "engine.device=cpu"]
    return [
        Step("kd_fast", mentor("bench", KD, "--stage", "kd_b64", "kd_b256", *STEPS, "--out", "kd.json"),
             mentor("bench", KD, "--stage", "kd_b64", "kd_b256", *TINY_STEPS, *TINY_KD, "--out", "kd.json"),
             out="kd.json"),
        Step("plain_b64_fp32", python(plain, "--batch-size", "64", *STEPS, "--workers", "8"),
             python(plain, "--batch-size", "64", *tiny_plain)),
        Step("plain_b256_fp32", python(plain, "--batch-size", "256", *STEPS, "--workers", "8"),
             python(plain, "--batch-size", "256", *tiny_plain)),
        Step("plain_b256_bf16_cl", python(plain, "--batch-size", "256", *STEPS, "--workers", "8", "--bf16",
                                          "--channels-last"),
             python(plain, "--batch-size", "256", *tiny_plain, "--channels-last")),
        Step("kd_compiled", mentor("bench", KD, "--stage", "kd_b256", *STEPS, "--set", "engine.compile=true",
                                   "--out", "kd_compiled.json"),
             mentor("bench", KD, "--stage", "kd_b256", *TINY_STEPS, *TINY_KD, "--out", "kd_compiled.json"),
             out="kd_compiled.json", timeout_s=360),
        Step("kd_host_data", mentor("bench", KD, "--stage", "kd_b256", *STEPS, "--set",
                                    "engine.data_placement=host", "--out", "kd_host.json"),
             mentor("bench", KD, "--stage", "kd_b256", *TINY_STEPS, *TINY_KD, "--set",
                    "engine.data_placement=host", "--out", "kd_host.json"),
             out="kd_host.json"),
        Step("kd_cached", mentor("bench", KD, "--stage", "kd_b256", *STEPS, "--set", CACHED, "--out",
                                 "kd_cached.json"),
             mentor("bench", KD, "--stage", "kd_b256", *TINY_STEPS, *TINY_KD, "--set", CACHED, "--out",
                    "kd_cached.json"),
             out="kd_cached.json"),
        Step("mpl", mentor("bench", MPL, "--steps", "20", "--warmup", "5", "--out", "mpl.json",
                           "--set", "data.source=random_images", "--set", "data.params={num_classes: 10}",
                           "--set", "stages[0].student_wait_steps=0"),
             mentor("bench", MPL, *TINY_STEPS, "--out", "mpl.json", "--set", "data.source=random_images",
                    "--set", "data.params={num_classes: 10, train_size: 2000, test_size: 64, image_size: 8}",
                    "--set", "data.val_size=64", "--set", "data.labeled_per_class=8",
                    "--set", "stages[0].student_wait_steps=0", "--set", "stages[0].batch_size=8",
                    "--set", "stages[0].unlabeled_ratio=2", "--set", "stages[0].teacher_accuracy_images=64",
                    "--set", "models.wrn={name: small_cnn, params: {channels: [4]}}",
                    "--set", "engine.device=cpu"),
             out="mpl.json"),
        Step("fashion_run", mentor("run", FASHION), mentor("run", FASHION, *fashion_tiny), timeout_s=300),
        Step("fashion_time_to_94", python("experiments/benchmarks/time_to_accuracy.py", "fashion-teacher-94",
                                          "--stage", "teacher", "--target", "0.94"),
             python("experiments/benchmarks/time_to_accuracy.py", "fashion-teacher-94", "--stage", "teacher",
                    "--target", "0.94", "--train-images", "896")),
        Step("fashion_step", mentor("bench", FASHION, *STEPS, "--out", "fashion.json"),
             mentor("bench", FASHION, *TINY_STEPS, *fashion_tiny, "--out", "fashion.json"), out="fashion.json"),
    ]


def run_step(step: Step, dry: bool, workdir: Path) -> dict:
    argv = step.dry if dry else step.argv
    started = time.perf_counter()
    env = {**os.environ, **step.env, "CI": "1"}  # plain progress lines in the log
    try:
        proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=step.timeout_s, env=env)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = "timeout", exc.stdout or "", f"timed out after {step.timeout_s} s"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    record = {"name": step.name, "argv": argv[1:], "rc": rc, "seconds": round(time.perf_counter() - started, 1)}
    try:
        if step.out is not None:
            record["result"] = json.loads((workdir / step.out).read_text())
        else:
            record["result"] = json.loads(stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):  # a training run (fashion_run) prints no JSON
        record["result"] = None
    if rc != 0 and not (step.name == "fashion_time_to_94" and rc == 1):  # 1: the target was not reached
        record["error"] = (stderr or stdout)[-2000:]
    return record


def _stage(record: dict | None, name: str) -> dict | None:
    result = (record or {}).get("result") or {}
    return next((s for s in result.get("stages", []) if s["stage"] == name), None)


def _fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _kd(stage: dict | None) -> str:
    if stage is None:
        return "failed (see the JSON)"
    mfu = stage.get("mfu")
    return (f"{_fmt(stage['images_per_second'])} img/s; {_fmt(stage['step_ms']['median'])} ms; "
            f"MFU {'n/a' if mfu is None else f'{mfu:.1%}'}")


def table(records: dict[str, dict]) -> list[tuple[str, str]]:
    """(figure, value) rows in docs/benchmarks.md's order."""
    def plain(name):
        result = (records.get(name) or {}).get("result")
        return result.get("images_per_second") if result else None

    kd64, kd256 = _stage(records.get("kd_fast"), "kd_b64"), _stage(records.get("kd_fast"), "kd_b256")
    rows = [("KD step, batch 64, mentor (images/s; step ms; MFU)", _kd(kd64)),
            ("KD step, batch 256, mentor (images/s; step ms; MFU)", _kd(kd256))]
    if kd256 is not None:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in kd256["breakdown_ms"].items())
        rows.append(("KD step breakdown (ms) and loop overhead, batch 256",
                     f"{parts}; overhead {kd256['overhead']['loop_fraction']:.1%}"))
    for label, name in (("batch 64, plain loop fp32", "plain_b64_fp32"),
                        ("batch 256, plain loop fp32", "plain_b256_fp32"),
                        ("batch 256, plain loop bf16 + channels_last", "plain_b256_bf16_cl")):
        rows.append((f"KD step, {label} (images/s)", _fmt(plain(name))))
    for batch, stage, name in ((256, kd256, "plain_b256_fp32"), (64, kd64, "plain_b64_fp32")):
        ratio = stage["images_per_second"] / plain(name) if stage and plain(name) else None
        rows.append((f"ratio mentor / plain loop fp32, batch {batch}", _fmt(ratio, 2)))
    compiled = _stage(records.get("kd_compiled"), "kd_b256")
    rows.append(("KD step, batch 256, compiled (images/s)", _fmt(compiled and compiled["images_per_second"])))
    host = _stage(records.get("kd_host_data"), "kd_b256")
    rows.append(("KD step, batch 256, host data placement (images/s; vs device)",
                 f"{_fmt(host and host['images_per_second'])}; x"
                 f"{_fmt(host['images_per_second'] / kd256['images_per_second'], 2) if host and kd256 else 'n/a'}"))
    cached = _stage(records.get("kd_cached"), "kd_b256")
    rows.append(("KD step, batch 256, teacher cache of 4 views (images/s; vs live)",
                 f"{_fmt(cached and cached['images_per_second'])}; x"
                 f"{_fmt(cached['images_per_second'] / kd256['images_per_second'], 2) if cached and kd256 else 'n/a'}"))
    mpl = (records.get("mpl") or {}).get("result")
    mpl_stage = (mpl or {}).get("stages", [None])[0] if mpl else None
    mpl_ms = mpl_stage["step_ms"]["median"] if mpl_stage else None
    rows.append(("MPL step, WRN-28-2, 128 labeled + 2 x 896 unlabeled (steps/s; step ms)",
                 "failed (see the JSON)" if mpl_ms is None else f"{_fmt(1000 / mpl_ms, 2)} steps/s; {_fmt(mpl_ms)} ms"))
    t94 = (records.get("fashion_time_to_94") or {}).get("result")
    rows.append(("Fashion-MNIST teacher: training seconds to 94% test accuracy",
                 "n/a" if not t94 else (f"{_fmt(t94['training_seconds'])} s (epoch {t94['reached_at_epoch']})"
                                        if t94["reached_at_epoch"] is not None else
                                        f"not reached (best {t94['best_test_accuracy']:.4f})")))
    fashion = _stage(records.get("fashion_step"), "teacher")
    rows.append(("Fashion-MNIST teacher step, batch 256 (images/s)",
                 _fmt(fashion and fashion["images_per_second"])))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (CI): figures mean nothing")
    parser.add_argument("--out", default="gpu_suite.json", help="every raw result, as one JSON")
    parser.add_argument("--workdir", default=None, help="where the runs' store and files go (default: a temp dir)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these steps")
    args = parser.parse_args(argv)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; the suite measures GPU figures (use --dry-run to check it on a CPU)",
              file=sys.stderr)
        return 2
    chosen = steps()
    known = [s.name for s in chosen]
    unknown = [n for n in args.only or () if n not in known]
    if unknown:
        print(f"error: --only: unknown step(s) {unknown} (steps: {', '.join(known)})", file=sys.stderr)
        return 2
    chosen = [s for s in chosen if args.only is None or s.name in args.only]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mentor-gpu-suite-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records = {}
    for step in chosen:
        records[step.name] = record = run_step(step, args.dry_run, workdir)
        print(f"{step.name}: rc {record['rc']} in {record['seconds']} s", file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else platform.processor()
    document = {"dry_run": args.dry_run, "device": device or platform.machine(), "torch": torch.__version__,
                "seconds": round(time.perf_counter() - started, 1), "workdir": str(workdir), "steps": records}
    Path(args.out).write_text(json.dumps(document, indent=2))
    print(f"GPU suite on {document['device']} ({document['seconds']} s)"
          + (": DRY RUN, tiny sizes on the CPU, the figures mean nothing" if args.dry_run else ""))
    print("\n| figure | value |\n| --- | --- |")
    for figure, value in table(records):
        print(f"| {figure} | {value} |")
    failed = [name for name, r in records.items() if "error" in r]
    if failed:
        print(f"\nfailed: {', '.join(failed)} (their errors are in {args.out})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
