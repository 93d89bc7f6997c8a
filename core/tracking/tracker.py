"""Recording a run in MLflow: a parent run per experiment, a child per stage.

Uses ``MlflowClient`` with explicit run ids (not the fluent API's global
active-run stack), so nesting and resuming a run are plain arguments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from . import store
from .metric_writer import MetricWriter
from .store import get_or_create_experiment, tracking_uri

MAX_PARAM_LENGTH = 6000


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': [1, {'c': 2}]}} -> {'a.b.0': '1', 'a.b.1.c': '2'}."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        if not data and prefix:
            out[prefix] = "{}"
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, (list, tuple)):
        if not data and prefix:
            out[prefix] = "[]"
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix] = "None" if data is None else str(data)
    return out


@contextlib.contextmanager
def fluent_tracking_uri(uri: str):
    """Point MLflow's fluent API at ``uri`` for a block, then put back what was there.

    ``mlflow.set_tracking_uri`` also sets MLFLOW_TRACKING_URI in the environment,
    which would leak into every later run in this process.
    """
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    # what was set, None included: get_tracking_uri() would resolve None to a default store of the
    # current folder and pin it for the rest of the process
    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


class TrackingUnreachable(ConnectionError):
    """The MLflow tracking server does not answer; says the address that was tried."""


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the address, when an http(s) tracking server is not there (MLflow's
    client would retry for minutes first). Other stores (sqlite, files) are local."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        shown = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", uri)
        raise TrackingUnreachable(f"cannot reach the MLflow tracking server at {shown} "
                                  f"({parts.hostname}:{port}): {exc.strerror or exc}") from None


class Tracker:
    """An experiment's runs in one MLflow store."""

    def __init__(self, experiment: str, uri: str | None = None):
        self.uri = tracking_uri(uri)
        store.opened.append(self.uri)
        check_reachable(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment, self.uri)
        self.experiment = experiment
        self._metrics = MetricWriter(self.client)  # off the loop's path; flush() waits for nothing else
        self._logged: dict[str, set[tuple[str, int]]] = {}  # per reopened run: (metric, step) already there

    # -- runs ---------------------------------------------------------------------
    def start_run(self, name: str, tags: dict[str, str], parent: str | None = None) -> str:
        tags = dict(tags)
        if parent:
            tags["mlflow.parentRunId"] = parent
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def reopen(self, run_id: str) -> None:
        """Set a run RUNNING again to continue it (a resume). What it logged before stays as it was: a
        metric at a step it already holds is not logged again, so a run resumed from its last checkpoint
        repeats the steps after it without doubling them in its history (nor its summary metrics)."""
        self.client.update_run(run_id, status="RUNNING")
        run = self.client.get_run(run_id)
        self._logged[run_id] = {(key, m.step) for key in run.data.metrics
                                for m in self.client.get_metric_history(run_id, key)}

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._metrics.flush()  # a run ends with every metric it logged in the store
        self.client.set_terminated(run_id, status=status)

    def find_runs(self, filter_string: str) -> list:
        return self.client.search_runs(
            [self.experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"]
        )

    def children(self, parent: str) -> list:
        return self.find_runs(f"tags.`mlflow.parentRunId` = '{parent}'")

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    # -- values -------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        existing = self.client.get_run(run_id).data.params
        items = [
            Param(k[:250], str(v)[:MAX_PARAM_LENGTH])
            for k, v in flatten(params).items()
            if k[:250] not in existing
        ]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100], synchronous=True)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        now, step = int(time.time() * 1000), step or 0
        logged = self._logged.get(run_id, ())
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if (k, step) not in logged]
        if not items:
            return
        self._metrics.put(run_id, items)

    def flush(self) -> None:
        """Every metric logged so far is in the store when this returns (before a checkpoint, a run's end)."""
        self._metrics.flush()

    # -- artifacts ----------------------------------------------------------------
    def log_dict(self, run_id: str, data: dict, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(run_id, figure, artifact_file)
        plt.close(figure)

    def log_file(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_model(self, run_id: str, model, name: str, example, metadata: dict | None = None) -> None:
        """The final model as an MLflow model (pickle format: no torch.export needed)."""
        import mlflow.pytorch
        import torch

        if self._model_logged(run_id, name):
            return
        # pickle is chosen on purpose (torch.export fails on many models); no need to warn each time
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
        with fluent_tracking_uri(self.uri), mlflow.start_run(run_id=run_id, nested=True):
            mlflow.pytorch.log_model(
                model, name=name, serialization_format="pickle", input_example=example, metadata=metadata,
                # stated, not inferred: inference re-imports the model in a subprocess (slow)
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            )
        # start_run(run_id=...) ended the run FINISHED on exit; the caller decides when it ends
        self.client.update_run(run_id, status="RUNNING")

    def _model_logged(self, run_id: str, name: str) -> bool:
        """Whether ``run_id`` holds a finished MLflow model ``name`` (a resumed run logs it once); one
        left unfinished by a killed run is deleted, to be logged again."""
        from mlflow.entities import LoggedModelStatus

        models = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
        for model in models:
            if model.status == LoggedModelStatus.READY:
                return True
            self.client.delete_logged_model(model.model_id)
        return False

    def has_artifact(self, run_id: str, artifact_file: str) -> bool:
        folder = str(Path(artifact_file).parent)
        listed = self.client.list_artifacts(run_id, None if folder == "." else folder)
        return any(item.path == artifact_file for item in listed)

    def log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(run_id, str(path), None if parent == "." else parent)

    def log_dataset(self, run_id: str, table, name: str, context: str) -> None:
        """A polars table as a dataset input of the run (``mlflow.data.from_polars``)."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        dataset = mlflow.data.from_polars(table, name=name)
        self.client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(),
                                                     [InputTag("mlflow.data.context", context)])])


class _Ignore:
    """Any method call, accepted and ignored (for code that reaches ``tracker.client`` directly)."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class NullTracker:
    """What ranks other than 0 get under torchrun: the Tracker's calls, nothing recorded.

    Rank 0 alone talks to MLflow, so a run is recorded once however many
    processes train it; the other ranks run the same code against this.
    """

    RUN_ID = "not-recorded-on-this-rank"

    def __init__(self, experiment: str, uri: str | None = None):
        self.experiment, self.uri, self.experiment_id = experiment, uri or "", ""
        self.client = _Ignore()

    def start_run(self, name: str, tags: dict[str, str], parent: str | None = None) -> str:
        return self.RUN_ID

    def find_runs(self, filter_string: str) -> list:
        return []

    def children(self, parent: str) -> list:
        return []

    def status(self, run_id: str) -> str:
        return "RUNNING"

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        plt.close(figure)

    def __getattr__(self, name: str):  # reopen, end_run, log_*, set_tags, flush
        if name.startswith("_") or not hasattr(Tracker, name):
            raise AttributeError(name)
        return lambda *args, **kwargs: None
