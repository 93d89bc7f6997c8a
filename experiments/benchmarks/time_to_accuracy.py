"""Training time until a stage first reaches a test accuracy, read from MLflow.

    python experiments/benchmarks/time_to_accuracy.py EXPERIMENT [--stage teacher] [--target 0.94]
        [--train-images 55000] [--tracking-uri URI]

For the newest run of ``--stage`` in experiment ``EXPERIMENT``: training
seconds = the sum over epochs, up to and including the first epoch whose
``test/accuracy`` >= ``--target``, of that epoch's images / ``throughput``
(the loop's own timer: training steps only, evaluation and checkpointing
excluded); an epoch's images are the stage's ``train_subset`` or
``--train-images``, less the partial last batch the loop drops. Also
printed: the wall time from the stage run's start to that epoch's logged
metric (everything included). Prints one JSON object; exit 1
if the target was never reached. ``reached_at_epoch`` is 1-based, as the
stage run's metric steps.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--stage", default="teacher")
    parser.add_argument("--target", type=float, default=0.94)
    parser.add_argument("--train-images", type=int, default=55_000,
                        help="the stage's training images when it has no train_subset (Fashion-MNIST less val_size)")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient

    from mentor.tracking.store import tracking_uri

    client = MlflowClient(tracking_uri(args.tracking_uri))
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(f"error: no experiment '{args.experiment}' in {client.tracking_uri}", file=sys.stderr)
        return 2
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`mentor.stage` = '{args.stage}' and tags.`mentor.kind` = 'stage'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        print(f"error: no run of stage '{args.stage}' in '{args.experiment}'", file=sys.stderr)
        return 2
    run = runs[0]
    accuracy = {m.step: m for m in client.get_metric_history(run.info.run_id, "test/accuracy")}
    throughput = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "throughput")}
    batch = int(run.data.params.get("stage.batch_size", 1))
    subset = run.data.params.get("stage.train_subset")
    train = int(subset) if subset not in (None, "None", "") else args.train_images
    images = train // batch * batch if train > batch else train  # the loop drops the last partial batch
    seconds, reached = 0.0, None
    for step in sorted(throughput):
        seconds += images / throughput[step]
        if step in accuracy and accuracy[step].value >= args.target:
            reached = step
            break
    result = {"experiment": args.experiment, "stage": args.stage, "run_id": run.info.run_id,
              "target": args.target, "reached_at_epoch": reached,
              "training_seconds": seconds if reached is not None else None,
              "wall_seconds": (accuracy[reached].timestamp - run.info.start_time) / 1e3 if reached is not None
              else None,
              "best_test_accuracy": max((m.value for m in accuracy.values()), default=None),
              "images_per_epoch": images}
    print(json.dumps(result))
    return 0 if reached is not None else 1


if __name__ == "__main__":
    sys.exit(main())
