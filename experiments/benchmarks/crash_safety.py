"""Crash safety, proven: SIGKILL runs of every method at chosen moments, resume them, compare with a run
that was never killed.

    python experiments/benchmarks/crash_safety.py                 # every shape, every kill point
    python experiments/benchmarks/crash_safety.py --shapes train mpl --points step,step@2
    python experiments/benchmarks/crash_safety.py --out crash.json --markdown crash.md

For each experiment shape (train, distill with a feature loss, pseudo-label on the labeled split and on a
folder of unlabeled images, Noisy Student rounds, MPL with fine-tune) it runs ``mentor run`` once without
a kill and counts the moments a kill can land on:

- ``step``: after an optimizer step (inside an epoch)
- ``checkpoint``: while writing a loop checkpoint (the temporary file full, not yet renamed over the last)
- ``epoch``: just after a checkpoint landed (an epoch boundary)
- ``stage``: just after a stage or phase wrote its result (between stages)
- ``mlflow``: just after a call that logs to MLflow (metrics queued, not yet flushed)
- ``model``: while logging an MLflow model (its files saved, not uploaded)
- ``cache``: while building a teacher cache (a chunk of a view written and flushed, not yet marked done)
- ``time``: after a random number of seconds

Then each trial kills ``mentor run`` at its point (the n-th such moment), runs ``mentor run --resume``
(killed once more for a double kill) until it finishes, and compares the store with the uninterrupted
run's: one experiment run, every run's status, parameters, metric histories (every step and value),
logged models, artifacts and dataset inputs, and no temporary file left in the checkpoint folder. On the
CPU every trial must be identical. The sweep shape SIGKILLs a two-worker ``mentor sweep`` mid-trial and
checks that the rerun completes the study with no trial lost or counted twice and no run left RUNNING.

Each run happens in its own folder under ``--workdir`` (kept for inspection). The table is
docs/crash_safety.md's; tests/test_crash_safety.py runs a reduced set in CI.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve()
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
#: Metrics that time the machine: their steps must match, their values cannot.
TIMINGS = {"throughput", "teacher_cache.build_seconds"}
POINTS = ("step", "checkpoint", "epoch", "stage", "mlflow", "model", "cache", "time")

# -- the shapes -----------------------------------------------------------------------------------

NET = {"name": "small_cnn", "params": {"channels": [8, 16], "pool_size": 7}}
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
DATA = {"source": "fashion_mnist", "val_size": 500, "test_size": 500, "split_seed": 0,
        "augment": {"crop_padding": 2, "flip": True}}
TEACHER = {"name": "teacher", "kind": "train", "model": "net", "train_subset": 1000, "epochs": 2,
           "batch_size": 64, "optimizer": SGD}
SSL_DATA = {**DATA, "labeled_per_class": 40}
SSL_TEACHER = {**TEACHER, "train_subset": None, "epochs": 3}
POOL_IMAGES = 1500


def _shape(name: str, stages: list, data: dict = DATA, models: dict | None = None) -> dict:
    return {"name": f"crash-{name}", "seed": 0, "data": data, "models": models or {"net": NET},
            "stages": [{k: v for k, v in s.items() if v is not None} for s in stages],
            "engine": {"progress": "none"}, "tracking": {"log_model": True, "log_every_steps": 5}}


SHAPES = {
    "train": _shape("train", [{**TEACHER, "epochs": 3, "schedule": {"name": "cosine"}}]),
    "distill": _shape("distill", [TEACHER, {
        "name": "student", "kind": "distill", "teacher": "teacher", "student": "student", "train_subset": 1000,
        "epochs": 3, "batch_size": 64, "optimizer": SGD,
        "losses": [{"name": "cross_entropy", "weight": 0.5}, {"name": "kd", "weight": 0.5},
                   {"name": "hint", "weight": 10,
                    "params": {"student_node": "features.block2", "teacher_node": "features.block2"}}]}],
        models={"net": NET, "student": {"name": "small_cnn", "params": {"channels": [4, 16], "pool_size": 7}}}),
    "pseudo_label": _shape("pseudo_label", [SSL_TEACHER, {
        "name": "pseudo", "kind": "pseudo_label", "teacher": "teacher", "student": "net",
        "selection": {"name": "top_k_per_class", "params": {"k": 100}}, "epochs": 2, "batch_size": 64,
        "optimizer": SGD, "finetune": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.01}}}],
        data=SSL_DATA),
    "distill_cached": _shape("distill_cached", [TEACHER, {
        "name": "student", "kind": "distill", "teacher": "teacher", "student": "student", "train_subset": 1000,
        "epochs": 3, "batch_size": 64, "optimizer": SGD, "teacher_cache": {"views": 6},
        "losses": [{"name": "cross_entropy", "weight": 0.5}, {"name": "kd", "weight": 0.5},
                   {"name": "hint", "weight": 10,
                    "params": {"student_node": "features.block2", "teacher_node": "features.block2"}}]}],
        models={"net": NET, "student": {"name": "small_cnn", "params": {"channels": [4, 16], "pool_size": 7}}}),
    "pool": _shape("pool", [SSL_TEACHER, {
        "name": "pseudo", "kind": "pseudo_label", "teacher": "teacher", "student": "net", "score_chunk_size": 500,
        "selection": {"name": "top_k_per_class", "params": {"k": 80}}, "epochs": 2, "batch_size": 64,
        "optimizer": SGD, "finetune": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.01}}}],
        data={**SSL_DATA, "unlabeled": {"source": "image_folder", "params": {"path": "pool"}}}),
    "noisy_student": _shape("noisy_student", [SSL_TEACHER, {
        "name": "noisy", "kind": "pseudo_label", "teacher": "teacher", "student": "net", "mode": "joint",
        "rounds": 2, "unlabeled_ratio": 2, "selection": {"name": "balanced", "params": {"per_class": 60}},
        "epochs": 2, "batch_size": 32, "optimizer": SGD, "schedule": {"name": "cosine"}}], data=SSL_DATA),
    "mpl": _shape("mpl", [SSL_TEACHER, {
        "name": "mpl", "kind": "mpl", "teacher": "net", "student": "net", "teacher_init": "teacher",
        "epochs": 3, "batch_size": 32, "unlabeled_ratio": 2, "optimizer": SGD,
        "teacher_optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9}, "schedule": {"name": "cosine"},
        "teacher_accuracy_every": 5, "teacher_accuracy_images": 500,
        "finetune": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.01}}}], data=SSL_DATA),
}

SWEEP = {
    **_shape("sweep", [{**TEACHER, "epochs": 1}, {
        "name": "student", "kind": "distill", "teacher": "teacher", "student": "net", "train_subset": 500,
        "epochs": 2, "batch_size": 64, "optimizer": SGD,
        "losses": [{"name": "cross_entropy", "weight": 0.5}, {"name": "kd", "weight": 0.5}]}]),
    "tracking": {"log_model": False},
    "search": {"metric": "student/best.val.accuracy", "direction": "maximize", "trials": 4,
               "sampler": {"name": "random", "seed": 0},
               "space": {"stages[1].losses[1].params.temperature": {"float": [1, 8]}}},
}

#: The kill points of the full table: (shape-independent) lists of kills, each "point" or "point@n";
#: n defaults to the middle of the uninterrupted run's count. Two kills in a list: a double kill.
FULL_TRIALS = [
    ["step@2"], ["step"], ["checkpoint@1"], ["checkpoint"], ["epoch@1"], ["stage@1"], ["mlflow"],
    ["model@1"], ["time"], ["step", "step@2"], ["step", "checkpoint@1"], ["model@1", "stage@1"],
]

#: When the sweep is killed (a fraction of its uninterrupted time) and whether all of it or one worker.
SWEEP_KILLS = [(0.3, True), (0.6, True), (0.45, False)]


# -- the child: mentor, armed to die --------------------------------------------------------------


def child(point: str, nth: int, argv: list[str]) -> int:
    """Run ``mentor`` with ``argv``, killing this process with SIGKILL at the ``nth`` moment of kind
    ``point`` (``count``: never; write every kind's count to $CRASH_COUNTS at exit)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from mentor import cli
    from mentor.context import StageResult
    from mentor.engine import checkpoint

    counts: collections.Counter = collections.Counter()

    def moment(kind: str) -> None:
        counts[kind] += 1
        if kind == point and counts[kind] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    register_optimizer_step_post_hook(lambda *args: moment("step"))

    write_atomic = checkpoint.write_atomic

    def armed_write(path, write):
        if Path(path).parent.name == "done" and Path(path).parent.parent.parent.name == "teacher":
            moment("cache")  # a teacher cache's chunk is written and flushed; its marker not yet
            return write_atomic(path, write)
        if Path(path).name != "checkpoint.pt":
            return write_atomic(path, write)

        def write_then_die(handle):
            write(handle)
            handle.flush()
            moment("checkpoint")  # the temporary file is full; the rename has not happened

        write_atomic(path, write_then_die)
        moment("epoch")

    checkpoint.write_atomic = armed_write

    save = StageResult.save

    def armed_save(self, path):
        save(self, path)
        moment("stage")

    StageResult.save = armed_save

    from mlflow import MlflowClient

    log_batch = MlflowClient.log_batch

    def armed_log_batch(self, *args, **kwargs):
        out = log_batch(self, *args, **kwargs)
        moment("mlflow")
        return out

    MlflowClient.log_batch = armed_log_batch

    import mlflow.pytorch

    save_model = mlflow.pytorch.save_model

    def armed_save_model(*args, **kwargs):
        out = save_model(*args, **kwargs)
        moment("model")  # saved to a temporary folder; not uploaded, the logged model not finalized
        return out

    mlflow.pytorch.save_model = armed_save_model

    if point == "time":
        timer = threading.Timer(nth / 1000, lambda: os.kill(os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()
    try:
        return cli.main(argv)
    finally:
        if os.environ.get("CRASH_COUNTS"):
            Path(os.environ["CRASH_COUNTS"]).write_text(json.dumps(counts))


# -- the harness ----------------------------------------------------------------------------------


def mentor(workdir: Path, argv: list[str], point: str = "count", nth: int = 0, timeout: float = 900,
           counts: Path | None = None) -> subprocess.CompletedProcess:
    """``mentor ARGV`` in ``workdir`` under the armed child."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if counts is not None:
        env["CRASH_COUNTS"] = str(counts)
    return subprocess.run([sys.executable, str(HERE), "--child", point, str(nth), "--", *argv], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=timeout)


def prepare(workdir: Path, name: str, config: dict) -> Path:
    """A fresh folder holding the experiment file (and, for the pool shape, its folder of images)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    path = workdir / "experiment.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    if name == "pool":
        make_pool(workdir / "pool", POOL_IMAGES)
    return path


def make_pool(folder: Path, count: int) -> None:
    """The last ``count`` Fashion-MNIST training images as PNG files (the labels dropped)."""
    import gzip

    import numpy as np
    from PIL import Image

    root = Path(os.environ.get("MENTOR_FASHION_MNIST_DIR", DEFAULT_DATA))
    with gzip.open(root / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[-count:]
    for i, image in enumerate(images):
        sub = folder / f"{i // 500:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / f"{i:05d}.png")


def snapshot(workdir: Path, experiment: str) -> dict:
    """What the store holds of ``experiment``: per run (named by its place in the run tree), its
    status, parameters, metric histories, logged models, artifacts and dataset inputs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=10_000) if exp else []
    by_id = {r.info.run_id: r for r in runs}

    def place(run) -> str:
        parent = run.data.tags.get("mlflow.parentRunId")
        kind = run.data.tags.get("mentor.kind", "?")
        label = run.data.tags.get("mentor.child") or run.data.tags.get("mentor.stage") or kind
        return f"{place(by_id[parent])}/{label}" if parent in by_id else label

    models = collections.defaultdict(list)
    if exp:
        for model in client.search_logged_models([exp.experiment_id]):
            models[model.source_run_id].append(f"{model.name}:{model.status}")
    tree: dict = {}
    for run in runs:
        key = place(run)
        if key in tree:
            key = f"{key} (duplicate {run.info.run_id[:8]})"
        histories = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
                     for k in run.data.metrics}
        tree[key] = {
            "status": run.info.status,  # a path under the trial's own folder is the same path in each trial
            "params": {k: v.replace(str(workdir), "<workdir>") for k, v in sorted(run.data.params.items())},
            "metrics": histories,
            "models": sorted(models.get(run.info.run_id, [])),
            "artifacts": sorted(_artifacts(client, run.info.run_id)),
            "inputs": sorted(f"{d.dataset.name}:{d.dataset.digest}" for d in run.inputs.dataset_inputs),
        }
    return tree


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return out


def differences(reference: dict, resumed: dict) -> list[str]:
    """What the resumed store holds that the uninterrupted one does not, or the other way round."""
    out = []
    for key in sorted(reference.keys() | resumed.keys()):
        if key not in resumed:
            out.append(f"{key}: missing")
            continue
        if key not in reference:
            out.append(f"{key}: extra run ({resumed[key]['status']})")
            continue
        a, b = reference[key], resumed[key]
        for field in ("status", "params", "models", "artifacts", "inputs"):
            if a[field] != b[field]:
                out.append(f"{key}: {field} {_diff(a[field], b[field])}")
        for metric in sorted(a["metrics"].keys() | b["metrics"].keys()):
            x, y = a["metrics"].get(metric), b["metrics"].get(metric)
            if metric.rsplit("/", 1)[-1] in TIMINGS and x is not None and y is not None:
                x, y = [(step, "timed") for step, _ in x], [(step, "timed") for step, _ in y]
            if x != y:
                out.append(f"{key}: metric {metric} {_history_diff(x, y)}")
    return out


def _diff(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:4])
    if isinstance(a, list) and isinstance(b, list):
        return f"lost {sorted(set(a) - set(b))[:4]}, added {sorted(set(b) - set(a))[:4]} ({len(a)} -> {len(b)})"
    return f"{a!r} -> {b!r}"


def _history_diff(a, b) -> str:
    if a is None or b is None:
        return "missing" if b is None else "extra"
    if len(a) != len(b):
        steps_a, steps_b = collections.Counter(s for s, _ in a), collections.Counter(s for s, _ in b)
        extra, missing = sorted(steps_b - steps_a)[:5], sorted(steps_a - steps_b)[:5]
        return f"{len(a)} -> {len(b)} values (steps {extra} extra, {missing} missing)"
    first = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return f"step {a[first][0]}: {a[first][1]!r} -> {b[first][1]!r}"


def leftovers(workdir: Path) -> list[str]:
    """Temporary files a killed write left in the checkpoint folder (a resumed run must clear them)."""
    root = workdir / "mlruns" / "checkpoints"
    return sorted(str(p.relative_to(workdir)) for p in root.rglob(".*.tmp")) if root.exists() else []


def reference(name: str, config: dict, workdir: Path) -> dict:
    """The uninterrupted run: its snapshot, its counts of each kill point and its wall time."""
    path = prepare(workdir, name, config)
    counts = workdir / "counts.json"
    start = time.perf_counter()
    done = mentor(workdir, ["run", path.name], counts=counts)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the uninterrupted {name} run failed:\n{done.stderr[-3000:]}")
    return {"snapshot": snapshot(workdir, config["name"]), "counts": json.loads(counts.read_text()),
            "seconds": seconds}


def resolve(kill: str, counts: dict, seconds: float, rng: random.Random) -> tuple[str, int]:
    """``point@n`` -> (point, n); without n, the middle moment (or for ``time``, a random moment)."""
    point, _, n = kill.partition("@")
    if point not in POINTS:
        raise ValueError(f"unknown kill point '{point}' (known: {', '.join(POINTS)})")
    if point == "time":
        return point, int(1000 * rng.uniform(0.3, 0.9) * seconds) if not n else int(n)
    return point, int(n) if n else max(1, counts.get(point, 0) // 2)


def trial(name: str, config: dict, ref: dict, kills: list[str], workdir: Path, rng: random.Random) -> dict:
    """Kill at each of ``kills`` in turn (the first in a new run, the rest in its resumes), resume to the
    end and compare with ``ref``."""
    path = prepare(workdir, name, config)
    plan, log = [resolve(k, ref["counts"], ref["seconds"], rng) for k in kills], []
    argv = ["run", path.name]
    for point, nth in plan:
        done = mentor(workdir, argv, point, nth)
        killed = done.returncode == -signal.SIGKILL
        log.append(f"{point}@{nth}: {'killed' if killed else f'exit {done.returncode}'}")
        if not killed and done.returncode != 0:
            return {"kills": log, "exact": False, "differences": [f"exit {done.returncode}: {done.stderr[-800:]}"]}
        argv = ["run", path.name, "--resume"] if killed else argv
        if not killed:
            break  # the moment never came: the run finished
    if argv[-1] == "--resume":
        done = mentor(workdir, argv)
        if done.returncode != 0 and "no unfinished run" in done.stderr:  # killed before its run existed
            done = mentor(workdir, ["run", path.name])
        if done.returncode != 0:
            return {"kills": log, "exact": False, "differences": [f"resume exit {done.returncode}: "
                                                                  f"{done.stderr[-800:]}"]}
    found = differences(ref["snapshot"], snapshot(workdir, config["name"])) + [
        f"left behind: {p}" for p in leftovers(workdir)]
    return {"kills": log, "exact": not found, "differences": found}


def sweep_reference(workdir: Path) -> float:
    """The seconds an uninterrupted two-worker sweep takes (its kills are placed by it)."""
    path = prepare(workdir, "sweep", SWEEP)
    start = time.perf_counter()
    done = subprocess.run(_sweep_argv(path), cwd=workdir, env=_env(), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the uninterrupted sweep failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def sweep_trial(workdir: Path, kill_after: float, whole: bool = True) -> dict:
    """A two-worker sweep killed ``kill_after`` seconds in (SIGKILL to the launcher and both workers, or
    with ``whole=False`` to one worker only), then run again to the end: the study holds exactly its
    trials, each complete trial has one finished MLflow run, nothing is left RUNNING."""
    path = prepare(workdir, "sweep", SWEEP)
    proc = subprocess.Popen(_sweep_argv(path), cwd=workdir, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    what = "all" if whole else "one worker"
    try:
        proc.wait(timeout=kill_after)
        what = "none (finished first)"
    except subprocess.TimeoutExpired:
        if whole:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            os.kill(int(workers[0]), signal.SIGKILL)
    proc.wait(timeout=900)
    states = _study_states(workdir)
    done = subprocess.run(_sweep_argv(path), cwd=workdir, env=_env(), capture_output=True, text=True, timeout=900)
    problems = [] if done.returncode == 0 else [f"rerun exit {done.returncode}: {done.stderr[-800:]}"]
    problems += sweep_problems(workdir, SWEEP)
    return {"kills": [f"time@{int(kill_after * 1000)}: killed {what}, study then {states}"],
            "exact": not problems, "differences": problems}


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def _sweep_argv(path: Path) -> list[str]:
    return [sys.executable, "-m", "mentor.cli", "sweep", path.name, "--workers", "2"]


def _study(workdir: Path, config: dict = SWEEP):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = next((workdir / "mlruns" / "sweeps").rglob("*.log"), None)
    if journal is None:
        return None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=config["name"],
                             storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))


def _study_states(workdir: Path) -> str:
    study = _study(workdir)
    if study is None:
        return "not created"
    counts = collections.Counter(t.state.name.lower() for t in study.trials)
    return " ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "empty"


def sweep_problems(workdir: Path, config: dict) -> list[str]:
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    out = []
    study = _study(workdir, config)
    states = collections.Counter(t.state for t in study.trials)
    complete = [t.number for t in study.trials if t.state == TrialState.COMPLETE]
    if len(complete) != config["search"]["trials"]:
        out.append(f"{len(complete)} complete trials, not {config['search']['trials']} ({dict(states)})")
    if states.get(TrialState.RUNNING):
        out.append(f"{states[TrialState.RUNNING]} trials left RUNNING in the study")
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(config["name"])
    runs = client.search_runs([exp.experiment_id], max_results=10_000)
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    if running:
        out.append(f"runs left RUNNING: {running[:5]}")
    trial_runs = collections.Counter(r.data.tags.get("mentor.trial") for r in runs
                                     if r.data.tags.get("mentor.kind") == "trial")
    for number in complete:
        finished = [r for r in runs if r.data.tags.get("mentor.kind") == "trial"
                    and r.data.tags.get("mentor.trial") == str(number) and r.info.status == "FINISHED"]
        if len(finished) != 1:
            out.append(f"trial {number}: {len(finished)} finished MLflow runs")
    doubled = [n for n, c in trial_runs.items() if c > 1]
    if doubled:
        out.append(f"trials with more than one MLflow run: {doubled}")
    return out


def table(rows: list[dict]) -> str:
    lines = ["| shape | kills (point@moment) | result | what differed |", "| --- | --- | --- | --- |"]
    for row in rows:
        what = "; ".join(row["differences"][:3]) + (f" (+{len(row['differences']) - 3})"
                                                     if len(row["differences"]) > 3 else "")
        lines.append(f"| {row['shape']} | {', '.join(row['kills'])} | {'exact' if row['exact'] else 'DIFFERS'} "
                     f"| {what.replace('|', '/') or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1], int(argv[2]), argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=[*SHAPES, "sweep"], choices=[*SHAPES, "sweep"])
    parser.add_argument("--trials", type=lambda v: [t.split("+") for t in v.split(",")], default=FULL_TRIALS,
                        metavar="K[+K],...", help="kills per trial, e.g. step,step+step@2 (default: the full set)")
    parser.add_argument("--workdir", type=Path, default=Path("crash-safety"))
    parser.add_argument("--seed", type=int, default=0, help="for the random (time) kill points")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()  # the children run in their own folders: paths must not be relative
    rng = random.Random(args.seed)
    rows = []
    start = time.perf_counter()
    for name in args.shapes:
        if name == "sweep":
            seconds = sweep_reference(args.workdir / "sweep" / "reference")
            print(f"sweep: uninterrupted in {seconds:.0f} s", flush=True)
            for i, (fraction, whole) in enumerate(SWEEP_KILLS):
                row = sweep_trial(args.workdir / "sweep" / f"trial-{i}", fraction * seconds, whole)
                rows.append({"shape": "sweep (2 workers)", **row})
                print(table(rows[-1:]).splitlines()[-1], flush=True)
            continue
        config = SHAPES[name]
        ref = reference(name, config, args.workdir / name / "reference")
        print(f"{name}: uninterrupted in {ref['seconds']:.0f} s, moments {dict(ref['counts'])}", flush=True)
        for i, kills in enumerate(args.trials):
            row = {"shape": name, **trial(name, config, ref, kills, args.workdir / name / f"trial-{i}", rng)}
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    print(f"\n{table(rows)}\n\n{sum(r['exact'] for r in rows)} of {len(rows)} exact "
          f"in {(time.perf_counter() - start) / 60:.1f} min")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    if args.markdown:
        args.markdown.write_text(table(rows) + "\n")
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
