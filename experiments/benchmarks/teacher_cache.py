"""The teacher cache's trade, measured: KD training time and accuracy with and without it, over seeds.

    python experiments/benchmarks/teacher_cache.py --task fashion [--views live 1 4 16] [--seeds 0 1 2]
        [--workdir DIR] [--out teacher_cache.json]
    python experiments/benchmarks/teacher_cache.py --task resnet ...      # resnet32x4 -> resnet8x4

Both tasks run on Fashion-MNIST (Debian's dataset-fashion-mnist, or downloaded):

- ``fashion``: the quickstart's KD at its size (a cnn5 teacher trained on 10,000
  images for 4 epochs; a small_cnn student distilled on 1,000 images for 30
  epochs, batch 64, 0.5 CE + 0.5 KD at T=4), with augmentation (crop after 2
  pixels of padding, flip) so that the view count matters;
- ``resnet``: the CIFAR-shaped bench's models and augmentation (resnet32x4 ->
  resnet8x4, crop after 4 pixels of padding, flip, 0.1 CE + 0.9 KD at T=4),
  smaller: the teacher on 5,000 images for 3 epochs, the student on 1,000
  images for 12 epochs, evaluated every 3.

The teacher is trained once; then, for every seed, the student is distilled
with the teacher run live (``live``) and through a teacher cache of each view
count. The caches live in one folder for the whole benchmark, keyed as in any
run: the first seed of a view count builds its cache, the other seeds reuse
it (the cache's views are seeded by ``teacher_cache.seed``, not the stage's).

Reported per configuration (mean and standard deviation over seeds): training
seconds per epoch (the loop's own timer: training steps only), the stage's
wall seconds (everything: the cache's build or load, evaluation,
checkpoints), the build seconds (first seed), best validation accuracy and
the kept model's test accuracy. Writes every raw number to ``--out`` and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import yaml

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5.0e-4}
TASKS = {
    "fashion": {
        "models": {"teacher": {"name": "cnn5"},
                   "student": {"name": "small_cnn", "params": {"channels": [8, 16], "pool_size": 7}}},
        "augment": {"crop_padding": 2, "flip": True},
        "data": {"val_size": 5000},
        "teacher": {"train_subset": 10000, "epochs": 4, "batch_size": 128},
        "student": {"train_subset": 1000, "epochs": 30, "batch_size": 64,
                    "losses": [{"name": "cross_entropy", "weight": 0.5},
                               {"name": "kd", "weight": 0.5, "params": {"temperature": 4}}]},
    },
    "resnet": {
        "models": {"teacher": {"name": "resnet32x4"}, "student": {"name": "resnet8x4"}},
        "augment": {"crop_padding": 4, "flip": True},
        "data": {"val_size": 2000, "test_size": 2000},
        "teacher": {"train_subset": 5000, "epochs": 3, "batch_size": 64},
        "student": {"train_subset": 1000, "epochs": 12, "batch_size": 64, "eval_every": 3,
                    "losses": [{"name": "cross_entropy", "weight": 0.1},
                               {"name": "kd", "weight": 0.9, "params": {"temperature": 4}}]},
    },
}


def experiment(task: dict, name: str, stages: list[dict], teacher_checkpoint: str | None, cache_dir: Path) -> dict:
    models = copy.deepcopy(task["models"])
    if teacher_checkpoint:
        models["teacher"]["checkpoint"] = teacher_checkpoint
    return {"name": name, "seed": 0,
            "data": {"source": "fashion_mnist", "params": {"download": True}, "split_seed": 0,
                     "augment": task["augment"], **task["data"]},
            "models": models, "stages": stages,
            "engine": {"device": "cpu", "progress": "none"},
            "tracking": {"log_model": False, "cache_dir": str(cache_dir)}}


def run(doc: dict, path: Path):
    from mentor.config.loader import load_experiment
    from mentor.pipeline import ExperimentRunner
    from mentor.plugins import load_plugins

    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    plugins = load_plugins()
    experiment = load_experiment(path, registry=plugins.registry)
    t0 = time.perf_counter()
    results = ExperimentRunner(experiment, plugins).run()
    return results, time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="fashion")
    parser.add_argument("--views", nargs="+", default=["live", "1", "4", "16"],
                        help="configurations: live (no cache) and view counts")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workdir", default="teacher-cache-bench")
    parser.add_argument("--out", default=None)
    parser.add_argument("--teacher-checkpoint", default=None,
                        help="a teacher this script trained before (its final.pt): not trained again")
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    work = Path(args.workdir).resolve() / args.task
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # the MLflow store (mlruns/) and the run folders live here
    cache_dir = work / "cache"

    if args.teacher_checkpoint:  # evaluated only, for the report
        teacher_stage = {"name": "teacher", "kind": "evaluate", "model": "teacher"}
        checkpoint = str(Path(args.teacher_checkpoint).resolve())
    else:
        teacher_stage = {"name": "teacher", "kind": "train", "model": "teacher", "optimizer": SGD,
                         "schedule": {"name": "cosine"}, **task["teacher"]}
        checkpoint = None
    results, seconds = run(experiment(task, f"cache-bench-{args.task}-teacher", [teacher_stage], checkpoint,
                                      cache_dir), work / "teacher.yaml")
    teacher = results["teacher"]
    weights = checkpoint or teacher.weights
    teacher_accuracy = teacher.metrics.get("kept.test.accuracy", teacher.metrics.get("best.test.accuracy"))
    print(f"teacher: {teacher_accuracy} test accuracy, {seconds:.0f} s", file=sys.stderr)

    rows = []
    for seed in args.seeds:
        for views in args.views:
            stage = {"name": "student", "kind": "distill", "teacher": "teacher", "student": "student",
                     "seed": seed, "optimizer": SGD, "schedule": {"name": "cosine"}, **task["student"]}
            if views != "live":
                stage["teacher_cache"] = {"views": int(views)}
            doc = experiment(task, f"cache-bench-{args.task}", [stage], weights, cache_dir)
            results, wall = run(doc, work / f"student-{views}-{seed}.yaml")
            student = results["student"]
            images = stage["train_subset"] // stage["batch_size"] * stage["batch_size"]  # less a partial batch
            train_s = [images / h["throughput"] for h in student.history]
            build = _build_seconds(cache_dir, views)
            row = {"config": views, "seed": seed, "train_s_per_epoch": statistics.mean(train_s),
                   "stage_wall_s": wall, "best_val_accuracy": student.metrics["best.val.accuracy"],
                   "test_accuracy": student.metrics["kept.test.accuracy"], "cache_build_s": build}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)

    table = summarise(rows, args.views)
    report = {"task": args.task, "machine": machine(), "teacher_test_accuracy": teacher_accuracy,
              "teacher_s": seconds, "seeds": args.seeds, "runs": rows, "summary": table}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(render(report))
    return 0


def _build_seconds(cache_dir: Path, views: str) -> float | None:
    if views == "live":
        return None
    for meta in (cache_dir / "teacher").glob("*/meta.json"):
        data = json.loads(meta.read_text())
        if data["record"]["views"] == int(views) or (data["record"]["augment"] is None and views == "1"):
            return data.get("built_seconds")
    return None


def summarise(rows: list[dict], configs: list[str]) -> list[dict]:
    out = []
    for config in configs:
        mine = [r for r in rows if r["config"] == config]

        def stat(key, mine=mine):
            values = [r[key] for r in mine]
            return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

        out.append({"config": config, "runs": len(mine), **{k: stat(k) for k in (
            "train_s_per_epoch", "stage_wall_s", "best_val_accuracy", "test_accuracy")},
            "cache_build_s": next((r["cache_build_s"] for r in mine if r["cache_build_s"] is not None), None)})
    live = next((s for s in out if s["config"] == "live"), None)
    for s in out:
        if live:
            s["speedup_train"] = live["train_s_per_epoch"]["mean"] / s["train_s_per_epoch"]["mean"]
            s["speedup_wall"] = live["stage_wall_s"]["mean"] / s["stage_wall_s"]["mean"]
    return out


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def render(report: dict) -> str:
    def ms(d, digits=2, scale=1.0):
        return f"{d['mean'] * scale:.{digits}f} ± {d['std'] * scale:.{digits}f}"

    lines = [f"task {report['task']} on {report['machine']}; teacher test accuracy "
             f"{report['teacher_test_accuracy']:.4f}; seeds {report['seeds']}", "",
             "| teacher | train s / epoch | speed-up | stage wall s | speed-up | cache build s | best val acc (%) "
             "| test acc (%) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in report["summary"]:
        name = "live" if s["config"] == "live" else f"cache, {s['config']} views"
        build = "-" if s["cache_build_s"] is None else f"{s['cache_build_s']:.1f}"
        lines.append(f"| {name} | {ms(s['train_s_per_epoch'], 3)} | {s.get('speedup_train', 1):.2f}x | "
                     f"{ms(s['stage_wall_s'], 1)} | {s.get('speedup_wall', 1):.2f}x | {build} | "
                     f"{ms(s['best_val_accuracy'], 2, 100)} | {ms(s['test_accuracy'], 2, 100)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
