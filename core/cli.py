"""The mentor command: teacher-student learning from declarative experiment files.

User mistakes (a bad file, an unknown plugin, a missing dataset, a corrupt
checkpoint) end with a located one-line message and exit code 2, never a
traceback; set MENTOR_DEBUG=1 to see one anyway.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from .cache_command import cmd_cache
from .cli_common import EXIT_INTERRUPTED, EXIT_USAGE, err, load
from .compare_command import cmd_compare
from .inspect_commands import cmd_layers, cmd_plugins, cmd_schema
from .run_command import cmd_run

__all__ = ["build_parser", "cmd_layers", "cmd_plugins", "cmd_run", "cmd_schema", "main"]




def cmd_validate(args) -> int:
    experiment, plugins = load(args.file, args.set)
    names = ", ".join(f"{s.name} ({s.kind})" for s in experiment.stages)
    if args.data:
        from .pipeline import ExperimentRunner

        runner = ExperimentRunner(experiment, plugins)
        # sizes against the data (val_size, labeled_per_class, train_subset), pools, each model's classes
        runner.splits = runner.load_data()
        print(f"  data: {runner.data_line()}")
    print(f"{args.file}: valid. experiment '{experiment.name}', stages: {names}")
    return 0


def cmd_export(args) -> int:
    from .export_command import export_run
    from .plugins import default_plugins

    stage, record = export_run(args.run_id, default_plugins(), stage=args.stage, int8=True if args.int8 else None,
                               tracking_uri=args.tracking_uri)
    check = record["check"]
    print(f"{stage}: {record['onnx']} (ONNX Runtime vs PyTorch on {int(check['images'])} test images: max abs "
          f"difference {check['max_abs_diff']:.2g}, top-1 agreement {check['top1_agreement']:.4f}; test accuracy "
          f"{record['onnx_test_accuracy']:.4f})")
    if record.get("int8"):
        print(f"{stage}: {record['int8']} (int8, test accuracy {record['int8_test_accuracy']:.4f}: "
              f"{record['int8_status']})")
    return 0


def cmd_sweep(args) -> int:
    from .search.storage import masked
    from .search.sweep import Sweep, SweepError, run_workers, worker_command

    experiment, plugins = load(args.file, args.set)
    try:
        sweep = Sweep(experiment, plugins, trials=args.trials, storage=args.storage, study_name=args.study,
                      worker=args.worker_index).open()
    except SweepError as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    launcher = args.worker_index is None  # a worker of --workers leaves the talking and the summary to it
    if launcher:
        print(f"study '{sweep.study_name}' in {masked(sweep.url)}: {len(sweep.study.trials)} trials so far, "
              f"taking trials until it holds {sweep.target}", flush=True)
    status, code = "FAILED", 0
    try:
        workers = min(args.workers, sweep.remaining())  # no more workers than trials to take
        if workers > 1:
            command = worker_command(args.file, args.set, sweep.search.trials, sweep.url, sweep.study_name)
            codes = run_workers(command, workers)
            for i, rc in enumerate(codes):
                if rc != 0:
                    err(f"worker {i} exited with code {rc}")
            code = 1 if any(codes) else 0
        else:
            sweep.work()
        status = "FINISHED" if code == 0 else "FAILED"
    except KeyboardInterrupt:
        status, code = "KILLED", EXIT_INTERRUPTED
        if launcher:
            err(f"\ninterrupted. Continue the sweep with the same command (study '{sweep.study_name}')")
    finally:
        if launcher:
            _sweep_summary(sweep, sweep.finish(status))
    return code


def _sweep_summary(sweep, best_path) -> None:
    from .search.report import best_trial

    best = best_trial(sweep.study)
    if best is not None:
        print(f"best: trial {best.number}, {sweep.search.metric} = {best.value:.4f}")
    if best_path is not None:
        print(f"its config: {best_path}  (mentor run {best_path})")
    name = sweep.experiment.tracking.experiment or sweep.experiment.name
    print(f"compare trials with: mentor compare {name} --level trial --study {sweep.study_name}")


def cmd_bench(args) -> int:
    from .bench import BenchError, dumps, render, run_bench
    from .engine.distributed import launched_world_size

    if launched_world_size() > 1:
        err("error: mentor bench measures one process; run it without torchrun (each GPU's step is the same)")
        return EXIT_USAGE
    experiment, plugins = load(args.file, args.set)
    try:
        report = run_bench(experiment, plugins, config=args.file, steps=args.steps, warmup=args.warmup,
                           stages=args.stage, peak_tflops=args.peak_tflops)
    except BenchError as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    if args.out:
        Path(args.out).write_text(dumps(report) + "\n")
    if args.json:
        print(dumps(report))
        err(render(report))
    else:
        print(render(report))
        if args.out:
            print(f"report: {args.out}")
    return 0


def cmd_predict(args) -> int:
    from .deploy.predict import load_model, predict_images

    model = load_model(args.model, args.tracking_uri)
    print(f"model: {model.description}", flush=True)
    modality = None
    if model.preprocess.modality != "image":  # what it reads is the modality plugin's to say
        from .plugins import default_plugins

        modality = default_plugins().registry.get("modality", model.preprocess.modality).factory()
    summary = predict_images(model, args.images, Path(args.out), top_k=args.top_k,
                             batch_size=args.batch_size, workers=args.workers, resize=not args.no_resize,
                             modality=modality)
    listed = f", listed in {summary.skipped_file}" if summary.skipped_file else ""
    what = "images" if modality is None else "examples"
    print(f"{summary.predicted} {what} -> {summary.out} ({summary.skipped} skipped{listed})")
    return 0


def cmd_ui(args) -> int:
    from .tracking.store import artifact_root, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port)]
    root = artifact_root(uri)
    if root:
        command += ["--default-artifact-root", root]
    from mlflow import MlflowClient

    from .tracking.ui_view import publish_runs_view, ui_url

    experiment_id = None
    if args.experiment:
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(args.experiment)
        if found is None:
            err(f"error: no experiment '{args.experiment}' in {uri}")
            return EXIT_USAGE
        experiment_id = found.experiment_id
        publish_runs_view(client, experiment_id, found.tags)  # an experiment recorded by an older mentor too
    print(f"MLflow UI for {uri}: open {ui_url(f'http://{args.host}:{args.port}', experiment_id)}", flush=True)
    os.execv(sys.executable, command)
    return 0  # pragma: no cover - execv does not return


EXAMPLES = """\
examples, one per command:
  mentor run experiments/quickstart.yaml                      train and distill; --resume continues
  mentor sweep experiments/fashion_sweep.yaml                 search hyperparameters (Optuna)
  mentor validate experiments/quickstart.yaml                 every error of a file, located
  mentor schema > experiment.schema.json                      JSON Schema for editors
  mentor plugins                                              components and their parameters
  mentor layers resnet8x4 --input 3x32x32                     node names for feature losses
  mentor compare fashion-quickstart                           rank the stage runs by val/accuracy
  mentor export RUN_ID                                        a stage to ONNX, checked by ONNX Runtime
  mentor bench experiments/quickstart.yaml                    time each stage's training step
  mentor predict RUN_ID photos/ cat.jpg 'more/*.png'          top-k classes of image files
  mentor ui --experiment fashion-quickstart                   the MLflow UI on mentor's store
`mentor COMMAND --help` tells more; README.md and docs/ the rest.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mentor", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"mentor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _experiment_commands(sub)
    _inspection_commands(sub)
    _result_commands(sub)
    return parser


def _with_file(p) -> None:
    """An experiment file and its ``--set`` overrides."""
    p.add_argument("file", help="experiment file (.yaml or .toml)")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field, e.g. stages[1].epochs=3 (repeatable)")


def _experiment_commands(sub) -> None:
    """run, sweep, validate: what takes an experiment file."""
    p = sub.add_parser("run", help="run an experiment")
    _with_file(p)
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_ID",
                   help="continue the last unfinished run of this file (or the given parent run)")
    p.add_argument("--seeds", type=_seed_list, default=None, metavar="S,S,...",
                   help="run once per seed under one parent run that logs mean and std (overrides `seeds:`)")
    p.add_argument("--resume-changed", action="store_true",
                   help="with --resume RUN_ID: continue that run although the file or --set changed it")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="search hyperparameters with Optuna (the file's search block)")
    _with_file(p)
    p.add_argument("--trials", type=_positive, default=None, metavar="N",
                   help="the study's size: take trials until it holds N (default: search.trials); "
                        "running again continues the study, a larger N adds trials")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="where the study lives: an RDB URL for several machines "
                        "(postgresql+psycopg2://user:pw@host/db) or journal:PATH; "
                        "default: a journal file in mlruns/sweeps/<study>/")
    p.add_argument("--study", default=None, metavar="NAME", help="the study's name (default: the experiment's)")
    p.add_argument("--workers", type=_positive, default=1, metavar="K",
                   help="worker processes on this machine, sharing the study (default 1)")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)  # set by --workers
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("validate", help="check an experiment file without running it")
    _with_file(p)
    p.add_argument("--data", action="store_true", help="also read the data: sizes that do not fit it (val_size, "
                   "labeled_per_class, train_subset), pools, each model's classes; as `mentor run` does first")
    p.set_defaults(func=cmd_validate)


def _inspection_commands(sub) -> None:
    """schema, plugins, layers: what is installed and what a model looks like."""
    p = sub.add_parser("schema", help="JSON Schema of experiment files (with all plugins)")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("plugins", help="list every registered component and its parameters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("layers", help="list a model's node names and output shapes (for hint layers)")
    p.add_argument("model", help="a model name (see `mentor plugins`), or a `models` key with --experiment")
    p.add_argument("--input", default="3x32x32", help="input shape CxHxW (default 3x32x32)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--params", default="{}", help="the model's params as JSON, e.g. '{\"dropout\": 0.1}'")
    p.add_argument("--experiment", metavar="FILE", help="take architecture, params and input shape from this file")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a field of --experiment")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_layers)


def _result_commands(sub) -> None:
    """compare, export, bench, predict, cache, ui: what runs left and what to do with it."""
    p = sub.add_parser("compare", help="leaderboard of experiments' runs (or sweep trials) from MLflow")
    p.add_argument("experiment", nargs="+", help="experiment name(s) (the file's `name:`); several side by side")
    p.add_argument("--metric", default=None, metavar="METRIC",
                   help="what ranks the runs, e.g. val/accuracy, test/accuracy, last.val.loss (default: "
                   "val/accuracy, so that no choice is made on test data; --level seeds: test/accuracy)")
    p.add_argument("--by", choices=["best", "last"], default="best",
                   help="best: at the epoch of best validation; last: final epoch")
    p.add_argument("--level", choices=["stage", "experiment", "trial", "seeds"], default="stage",
                   help="stage runs, whole runs, sweep trials (ranked by their objective), or multi-seed runs "
                   "(mean +- std per stage)")
    p.add_argument("--study", default=None, help="--level trial: only this study's trials")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--report", choices=["compression"], default=None,
                   help="compression: the latest run's compression report (size, FLOPs, latency, accuracy vs teacher)")
    p.add_argument("--columns", type=lambda v: [c.strip() for c in v.split(",") if c.strip()], default=None,
                   metavar="A,B,...", help="table: show these columns, in this order")
    p.add_argument("--wide", action="store_true", help="table: every column, however wide")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="export a finished run's stage to ONNX (and int8), checked by ONNX Runtime")
    p.add_argument("run_id", help="an experiment's run id (its last stage with a model) or a stage's run id")
    p.add_argument("--stage", default=None, help="the stage to export (default: the run's, or the last with a model)")
    p.add_argument("--int8", action="store_true", help="also an int8 model (ONNX Runtime static quantization)")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="time each stage's training step: images/s, breakdown, memory, FLOPs, MFU")
    _with_file(p)
    p.add_argument("--steps", type=_positive, default=20, metavar="N", help="timed steps per stage (default 20)")
    p.add_argument("--warmup", type=int, default=5, metavar="W", help="warm-up steps before timing (default 5)")
    p.add_argument("--stage", action="extend", nargs="+", default=None, metavar="NAME",
                   help="only these stages (default: every stage)")
    p.add_argument("--out", default=None, metavar="FILE", help="write the JSON report here")
    p.add_argument("--json", action="store_true", help="print the JSON report (the table goes to stderr)")
    p.add_argument("--peak-tflops", type=float, default=None, metavar="X",
                   help="the device's peak TFLOP/s for MFU (default: dense bf16 peak of known GPUs)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("predict", help="top-k classes of image files (or another modality's inputs), preprocessed "
                       "as the model was trained")
    p.add_argument("model", help="an .onnx file, an MLflow model folder, a runs:/ or models:/ URI, or a run id")
    p.add_argument("images", nargs="+", help="image files, folders of images (any depth), glob patterns "
                   "(quoted: 'photos/**/*.jpg'), or .parquet/.csv files with a path column; as many as you like. "
                   "A model of another modality reads what its plugin says (the tabular example: .csv/.parquet rows)")
    p.add_argument("--out", default="predictions.parquet", metavar="FILE", help="default predictions.parquet")
    p.add_argument("--top-k", type=_positive, default=5, metavar="K", help="classes per image (default 5)")
    p.add_argument("--batch-size", type=_positive, default=256, metavar="N")
    p.add_argument("--workers", type=int, default=2, metavar="W", help="decoding processes (default 2; 0: none)")
    p.add_argument("--no-resize", action="store_true",
                   help="refuse images whose size or channels differ from the model's instead of converting them")
    p.add_argument("--tracking-uri", default=None, help="the store of runs:/, models:/ and run ids")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cache", help="list the teacher caches and score tables runs share; remove them")
    p.add_argument("--dir", default="mlruns/cache", help="the cache folder (tracking.cache_dir; default mlruns/cache)")
    p.add_argument("--remove", nargs="+", metavar="KEY", help="remove these entries (a key's first characters)")
    p.add_argument("--clear", action="store_true", help="remove every entry")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("ui", help="open the MLflow UI on mentor's store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--experiment", default=None, help="print the address of this experiment's runs table")
    p.set_defaults(func=cmd_ui)


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds are distinct non-negative integers, e.g. 0,1,2; got {text!r}")
    return seeds


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# Errors a user can fix, said in one line with exit code 2: matched by where they are defined, so that
# no command imports torch or MLflow only to be able to catch them (an error raised was imported anyway).
USER_ERRORS = {
    "mentor.plugins.PluginError", "mentor.registry.PluginConflict", "mentor.registry.UnknownComponent",
    "mentor.data.types.DataNotFound", "mentor.engine.checkpoint.CheckpointError", "mentor.pipeline.NothingToResume",
    "mentor.tracking.tracker.TrackingUnreachable", "mentor.deploy.onnx_export.ExportError",
    "mentor.export_command.ExportRunError", "mentor.deploy.mlflow_models.RegistryConflict",
    "mentor.deploy.predict_inputs.PredictError", "mentor.teacher_cache.build.TeacherCacheError",
}


def _is(exc: BaseException, *names: str) -> bool:
    """Whether ``exc`` is an instance of a class named ``module.QualName`` (one of ``names``)."""
    return any(f"{c.__module__}.{c.__qualname__}" in names for c in type(exc).__mro__)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` ends a run like Ctrl-C: recorded KILLED, resumable
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its INFO chatter on every run
    debug = bool(os.environ.get("MENTOR_DEBUG"))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        err("\ninterrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if _is(exc, "mentor.config.errors.ConfigError"):
            err(str(exc))
            return EXIT_USAGE
        if _is(exc, "mentor.engine.loop.TrainingDiverged"):  # the run is recorded FAILED; its last good
            err(f"error: {exc}")  # checkpoint stays
            return 1
        if debug:
            raise
        from .tracking.store import disk_full_message

        full = disk_full_message(exc)
        if full is not None:
            err(full)
            return EXIT_USAGE
        if _is(exc, *USER_ERRORS):
            err(f"error: {exc}")
            return EXIT_USAGE
        # a bug or an environment problem: say what, keep it short
        err(f"error: {type(exc).__name__}: {exc}\n(set MENTOR_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
