"""A callback: every evaluated epoch's metrics appended to a CSV file, for tools outside MLflow."""

import csv
from pathlib import Path

from pydantic import Field

from mentor import FilePath, Params, hookimpl


class CSVLogParams(Params):
    path: FilePath = Field(description="the CSV file (appended to; created with a header)")


class CSVLog:
    def __init__(self, path: str):
        self.path = Path(path)

    @hookimpl
    def on_epoch_end(self, stage, ctx, epoch, metrics):
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["stage", "epoch", "metric", "value"])
            writer.writerows([stage.name, epoch + 1, name, value] for name, value in sorted(metrics.items()))


@hookimpl
def register_callbacks(register):
    register("csv_log", CSVLog, params=CSVLogParams, description="append each epoch's metrics to a CSV file")
