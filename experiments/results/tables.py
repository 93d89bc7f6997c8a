"""Print a docs/results.md table from a finished multi-seed run in an MLflow store.

    python experiments/results/tables.py fashion-results-distill [--tracking-uri URI]

One row per stage: test accuracy of the kept weights (the best validation
epoch's) and of the last epoch for each seed, their mean and sample std, and
the stage's wall time per seed (its MLflow run's start to end, on the machine
that ran it). Reads the newest finished `mentor.kind=seeds` run of the
experiment; the figures are the store's, nothing is recomputed.
"""

from __future__ import annotations

import argparse
import statistics
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--tracking-uri", default=None, help="default: the store `mentor run` uses")
    args = parser.parse_args(argv)

    from mlflow import MlflowClient

    from mentor.tracking.store import tracking_uri

    client = MlflowClient(tracking_uri(args.tracking_uri))
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(f"error: no experiment '{args.experiment}' in {client.tracking_uri}", file=sys.stderr)
        return 2
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    parents = sorted((r for r in runs if r.data.tags.get("mentor.kind") == "seeds"
                      and r.info.status == "FINISHED"), key=lambda r: r.info.start_time)
    if not parents:
        print(f"error: no finished multi-seed run of '{args.experiment}'", file=sys.stderr)
        return 2
    parent = parents[-1].info.run_id
    seed_runs = {r.info.run_id: int(r.data.tags["mentor.seed"]) for r in runs
                 if r.data.tags.get("mlflow.parentRunId") == parent and r.data.tags.get("mentor.kind") == "experiment"}
    rows: dict[str, dict[int, tuple[float | None, float | None, float]]] = {}
    order: list[str] = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        seed = seed_runs.get(run.data.tags.get("mlflow.parentRunId", ""))
        if seed is None or run.data.tags.get("mentor.kind") != "stage":
            continue
        stage = run.data.tags["mentor.stage"]
        if stage not in order:
            order.append(stage)
        m = run.data.metrics
        minutes = (run.info.end_time - run.info.start_time) / 60_000 if run.info.end_time else float("nan")
        rows.setdefault(stage, {})[seed] = (m.get("kept.test.accuracy"), m.get("last.test.accuracy"), minutes)
    seeds = sorted(set(seed_runs.values()))

    def cell(values: list[float | None]) -> str:
        found = [v for v in values if v is not None]
        if not found:
            return "n/a"
        spread = statistics.stdev(found) if len(found) > 1 else 0.0
        return f"{statistics.mean(found):.4f} ± {spread:.4f}"

    header = ["stage", *(f"seed {s} kept / last" for s in seeds), "kept mean ± std", "last mean ± std",
              "minutes per seed"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for stage in order:
        per_seed = rows[stage]
        kept = [per_seed.get(s, (None, None, 0))[0] for s in seeds]
        last = [per_seed.get(s, (None, None, 0))[1] for s in seeds]
        shown = [f"{k:.4f} / {v:.4f}" if k is not None and v is not None else "n/a"
                 for k, v in zip(kept, last, strict=True)]
        minutes = statistics.mean(per_seed[s][2] for s in per_seed)
        print(f"| {stage} | " + " | ".join(shown) + f" | {cell(kept)} | {cell(last)} | {minutes:.1f} |")
    total = (parents[-1].info.end_time - parents[-1].info.start_time) / 60_000
    print(f"\nrun {parent}: seeds {', '.join(map(str, seeds))}, {total:.1f} min wall for all of them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
