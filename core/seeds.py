"""One experiment, several seeds: a run per seed under one parent run that logs mean and std.

Why: a single run's accuracy moves by a point or more from seed to seed on
small data, so a comparison of methods means little without the spread.
``seeds: [0, 1, 2]`` in the file (or ``mentor run FILE --seeds 0,1,2``) runs
the experiment once per seed, each run an ordinary ``mentor run`` (its own
stages, checkpoints and resume state) nested under a run tagged
``mentor.kind=seeds``. That parent logs ``<stage>/<metric>/mean``, ``/std``
(sample std, n - 1) and ``/n`` for every summary metric its stages report,
and ``seeds/summary.csv``. ``mentor compare EXP --level seeds`` shows them.

Each seed run's ``seed`` is the seed; so is its ``data.split_seed`` unless the
file sets ``data.split_seed`` itself (then every seed trains on the same split
and only the training randomness varies).

A killed multi-seed run resumes with ``--resume``: finished seeds are kept,
the interrupted one resumes where it stopped, the rest run.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml

from .config.schema import applicable
from .context import StageResult
from .engine import distributed
from .pipeline import ExperimentRunner, NothingToResume, config_hash
from .tracking.tracker import Tracker

KIND = "seeds"
SUMMARY_PREFIXES = ("best.", "last.", "kept.", "model/")


class SeedsError(ValueError):
    """A multi-seed run cannot start (under torchrun, or nothing to resume)."""


@dataclass
class SeedsOutcome:
    run_id: str
    results: dict[int, dict[str, StageResult]]  # seed -> stage -> result
    summary: pl.DataFrame  # stage, metric, mean, std, n, values


def seed_experiment(experiment, seed: int):
    """The experiment as its run for ``seed`` (see the module doc for the split rule)."""
    update = {"seed": seed, "seeds": None}
    if "split_seed" not in experiment.data.model_fields_set:
        update["data"] = experiment.data.model_copy(update={"split_seed": seed})
    return experiment.model_copy(update=update)


def summarize(results: dict[int, dict[str, StageResult]]) -> pl.DataFrame:
    """Mean, sample std and count over seeds of every summary metric of every stage."""
    rows: dict[tuple[str, str], list[float]] = {}
    order: list[tuple[str, str]] = []
    for seed in sorted(results):
        for stage, result in results[seed].items():
            for metric, value in result.metrics.items():
                if not metric.startswith(SUMMARY_PREFIXES) or not isinstance(value, int | float):
                    continue
                if (stage, metric) not in rows:
                    rows[(stage, metric)] = []
                    order.append((stage, metric))
                rows[(stage, metric)].append(float(value))
    records = []
    for stage, metric in order:
        values = rows[(stage, metric)]
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        records.append({"stage": stage, "metric": metric, "mean": mean, "std": std, "n": n, "values": values})
    schema = {"stage": pl.String(), "metric": pl.String(), "mean": pl.Float64(), "std": pl.Float64(),
              "n": pl.Int64(), "values": pl.List(pl.Float64())}
    return pl.DataFrame(records, schema=schema)


def run_seeds(experiment, plugins, seeds: list[int], *, resume: bool = False) -> SeedsOutcome:
    if distributed.launched_world_size() > 1:
        raise SeedsError("seeds: under torchrun, run one seed at a time (mentor run FILE --set seed=S); "
                         "a multi-seed parent run is for single-process runs")
    base = experiment.model_copy(update={"seeds": list(seeds)})
    config = base.model_dump(mode="json", exclude={"search"})
    digest = config_hash(config)
    name = base.tracking.experiment or base.name
    tracker = Tracker(name, base.tracking.uri)
    parent = _find(tracker, digest) if resume else None
    if resume and parent is None:
        raise NothingToResume(f"no unfinished multi-seed run of '{name}' with this configuration to resume; "
                              "run without --resume")
    if parent is None:
        tags = {"mentor.kind": KIND, "mentor.seeds": ",".join(map(str, seeds)), "mentor.config_hash": digest}
        if base.description:
            tags["mlflow.note.content"] = base.description
        parent = tracker.start_run(f"{base.name} · seeds {','.join(map(str, seeds))}", tags)
        tracker.log_params(parent, applicable(config))
        tracker.log_text(parent, yaml.safe_dump(config, sort_keys=False), "config.yaml")
    else:
        tracker.reopen(parent)
        print(f"resuming multi-seed run {parent} in {tracker.uri}", file=sys.stderr)
    results: dict[int, dict[str, StageResult]] = {}
    status = "FAILED"
    try:
        for seed in seeds:
            print(f"--- seed {seed} ({seeds.index(seed) + 1} of {len(seeds)}) ---", file=sys.stderr, flush=True)
            results[seed] = _run_one(tracker, parent, seed_experiment(base, seed), plugins, seed)
        summary = summarize(results)
        metrics = {}
        for row in summary.iter_rows(named=True):
            key = f"{row['stage']}/{row['metric']}"
            metrics.update({f"{key}/mean": row["mean"], f"{key}/std": row["std"], f"{key}/n": float(row["n"])})
        tracker.log_metrics(parent, metrics)
        tracker.log_text(parent, summary.with_columns(pl.col("values").cast(pl.List(pl.String())).list.join(" "))
                         .write_csv(), "seeds/summary.csv")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.flush()
        tracker.end_run(parent, status)
    return SeedsOutcome(parent, results, summary)


def _find(tracker: Tracker, digest: str) -> str | None:
    """The newest unfinished multi-seed run with this configuration."""
    runs = tracker.find_runs(f"tags.`mentor.kind` = '{KIND}' and tags.`mentor.config_hash` = '{digest}'")
    return next((r.info.run_id for r in runs if r.info.status != "FINISHED"), None)


def _run_one(tracker: Tracker, parent: str, experiment, plugins, seed: int) -> dict[str, StageResult]:
    """This seed's results: read back when its run finished before, resumed when it was cut, else run."""
    tags = {"mentor.seed": str(seed), "mentor.seeds_run": parent}
    earlier = [r for r in tracker.children(parent)
               if r.data.tags.get("mentor.kind") == "experiment" and r.data.tags.get("mentor.seed") == str(seed)]
    runner = ExperimentRunner(experiment, plugins, parent_run_id=parent, tags=tags)
    if not earlier:
        return runner.run()
    child = earlier[0]
    if child.info.status == "FINISHED":
        print(f"seed {seed}: finished before (run {child.info.run_id}), kept", file=sys.stderr)
        return _finished_results(experiment, child.info.run_id)
    return runner.run(resume=True, resume_run_id=child.info.run_id)


def _finished_results(experiment, run_id: str) -> dict[str, StageResult]:
    folder = Path(experiment.tracking.checkpoint_dir) / experiment.name / run_id
    results = {}
    for stage in experiment.stages:
        done = folder / stage.name / "result.json"
        if done.is_file():
            results[stage.name] = StageResult.load(done)
    return results
