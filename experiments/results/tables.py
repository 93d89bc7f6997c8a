"""Print a docs/results.md table from a finished multi-seed run in an MLflow store.

    python experiments/results/tables.py fashion-results-distill [--tracking-uri URI] [--diagnostics]

One row per stage: test accuracy of the kept weights (the best validation
epoch's) and of the last epoch for each seed, their mean and sample std, and
the stage's wall time per seed (its MLflow run's start to end, on the machine
that ran it). Reads the newest finished `mentor.kind=seeds` run of the
experiment; the figures are the store's, nothing is recomputed.

``--diagnostics`` adds a second table: per stage, over the seeds, what the
semi-supervised methods log about their pseudo-labels as the stage ends
(FixMatch/FlexMatch: the share of an unlabeled batch above the threshold and
how many of those are right; pseudo-labelling: the selection's precision and
coverage of the unlabeled split, from its last round). The labels they are
checked against never reach a method: the core computes these.
"""

from __future__ import annotations

import argparse
import statistics
import sys

#: what the semi-supervised stages log about their pseudo-labels, and the column it is shown under
DIAGNOSTICS = {
    "fixmatch/mask_rate": "mask rate (FixMatch: share above the threshold)",
    "fixmatch/pseudo_label_accuracy": "masked pseudo-label precision",
    "pseudo/precision": "selection precision (pseudo-labelling)",
    "pseudo/coverage": "selection coverage",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--tracking-uri", default=None, help="default: the store `mentor run` uses")
    parser.add_argument("--diagnostics", action="store_true", help="also the pseudo-label diagnostics table")
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
    diagnostics: dict[str, dict[str, dict[int, float]]] = {}
    stage_seed = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        seed = seed_runs.get(run.data.tags.get("mlflow.parentRunId", ""))
        if seed is not None and run.data.tags.get("mentor.kind") == "stage":
            stage_seed[run.info.run_id] = seed
    for run in sorted(runs, key=lambda r: r.info.start_time):  # the pseudo-label rounds: the last one stays
        seed = stage_seed.get(run.data.tags.get("mlflow.parentRunId", ""))
        if seed is not None and run.data.tags.get("mentor.kind") == "child":
            for key, value in run.data.metrics.items():
                if key in DIAGNOSTICS:
                    diagnostics.setdefault(run.data.tags["mentor.stage"], {}).setdefault(key, {})[seed] = value
    for run in sorted(runs, key=lambda r: r.info.start_time):
        seed = seed_runs.get(run.data.tags.get("mlflow.parentRunId", ""))
        if seed is None or run.data.tags.get("mentor.kind") != "stage":
            continue
        for key, value in run.data.metrics.items():
            if key in DIAGNOSTICS:
                diagnostics.setdefault(run.data.tags["mentor.stage"], {}).setdefault(key, {})[seed] = value
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
    if args.diagnostics and not diagnostics:
        print("\n(no stage logged pseudo-label diagnostics)")
    elif args.diagnostics:
        names = [k for k in DIAGNOSTICS if any(k in d for d in diagnostics.values())]
        print("\n| stage | " + " | ".join(DIAGNOSTICS[k] for k in names) + " |")
        print("|" + "---|" * (len(names) + 1))
        for stage in order:
            found = diagnostics.get(stage, {})
            print(f"| {stage} | " + " | ".join(cell([found.get(k, {}).get(s) for s in seeds]) if k in found
                                               else "-" for k in names) + " |")
    total = (parents[-1].info.end_time - parents[-1].info.start_time) / 60_000
    print(f"\nrun {parent}: seeds {', '.join(map(str, seeds))}, {total:.1f} min wall for all of them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
