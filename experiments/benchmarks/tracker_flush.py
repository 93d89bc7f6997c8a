"""How long mentor waits on MLflow at each checkpoint and at each run's end.

The training loop flushes the tracker before every checkpoint (so a kill never
loses an epoch's metrics) and each stage run ends with ``end_run``. This logs an
epoch's metrics, lets the epoch go on for ``--gap`` seconds (evaluation, plots),
then times ``Tracker.flush()``, three epochs a run, and ``end_run``, over
``--runs`` runs in a fresh SQLite store.

    python experiments/benchmarks/tracker_flush.py --runs 10 --gap 0.3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from mentor.tracking.tracker import Tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between an epoch's last log and its flush")
    args = parser.parse_args()
    tracker = Tracker("tracker-flush", f"sqlite:///{tempfile.mkdtemp()}/mlflow.db")
    flushes, ends = [], []
    for i in range(args.runs):
        run = tracker.start_run(f"run {i}", {})
        for epoch in range(1, 4):
            tracker.log_metrics(run, {"train/loss": 1.0 / epoch, "val/accuracy": 0.5}, step=epoch)
            time.sleep(args.gap)
            start = time.perf_counter()
            tracker.flush()
            flushes.append(time.perf_counter() - start)
        tracker.log_metrics(run, {"last.val.accuracy": 0.5}, step=3)
        time.sleep(args.gap)
        start = time.perf_counter()
        tracker.end_run(run)
        ends.append(time.perf_counter() - start)
    print(f"flush: mean {statistics.mean(flushes) * 1000:.0f} ms, max {max(flushes) * 1000:.0f} ms "
          f"({len(flushes)}); end_run: mean {statistics.mean(ends) * 1000:.0f} ms ({len(ends)})")


if __name__ == "__main__":
    main()
