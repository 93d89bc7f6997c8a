"""Recording from a stage: the metrics, figures, tables and child runs of the run a stage writes to.

``StageContext`` inherits these; they need ``tracker`` and ``run_id`` (the
stage's MLflow run, or a child run inside ``nested``); ``describe_fit`` also
the stage's ``dir``, ``experiment`` and ``stage``.
"""

from __future__ import annotations

import contextlib
import io

import polars as pl

from .engine.distributed import is_main
from .model_input import bare


class StopRun(Exception):
    """Raised by a hook to stop a run on purpose (a pruned search trial): its runs end KILLED,
    not FAILED, and the exception goes on to the caller."""


class Recording:
    """What a stage records into its MLflow run (``self.run_id``) through ``self.tracker``."""

    tracker: object
    run_id: str

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step)

    def say(self, message: str) -> None:
        """One line on the terminal as it happens, ``[stage] message`` (rank 0 under torchrun): what a stage
        did that a person watching wants to know (files scored, rows selected)."""
        if is_main():
            print(f"[{self.stage.name}] {message}", flush=True)

    def warn(self, message: str) -> None:
        """Something the person running this should not miss, though the stage goes on: printed on the
        terminal as ``[stage] warning: ...`` and kept on the stage's run as the ``mentor.warning`` tag."""
        import sys

        if is_main():
            print(f"[{self.stage.name}] warning: {message}", file=sys.stderr, flush=True)
        self.tracker.set_tags(self.run_id, {"mentor.warning": message[:5000]})

    def log_figure(self, figure, artifact_file: str) -> None:
        """A matplotlib figure as a PNG artifact of the current run (the stage's, or a nested one)."""
        self.tracker.log_figure(self.run_id, figure, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.tracker.log_text(self.run_id, text, artifact_file)

    def log_table(self, table: pl.DataFrame, artifact_file: str) -> None:
        """A polars table as an artifact: parquet for ``.parquet`` names, CSV for ``.csv``."""
        if artifact_file.endswith(".csv"):
            self.tracker.log_text(self.run_id, table.write_csv(), artifact_file)
            return
        buffer = io.BytesIO()
        table.write_parquet(buffer)
        self.tracker.log_bytes(self.run_id, buffer.getvalue(), artifact_file)

    def log_dataset(self, table: pl.DataFrame, name: str, context: str) -> None:
        """A polars table as an MLflow dataset input of the current run (shown in the UI's Datasets)."""
        self.tracker.log_dataset(self.run_id, table, name, context)

    def describe_fit(self, task, model_key: str, phase: str | None) -> None:
        """The trained model's architecture and size, and the rows it trains on (an MLflow dataset input),
        on the run that records this fit; once per run and phase, so a resumed run adds nothing."""
        marker = self.dir / f"described-{self.run_id}-{phase or 'fit'}"
        if not is_main() or marker.exists():
            return
        model = bare(task.model)
        prefix = f"{phase}." if phase else ""
        spec = self.experiment.models.get(model_key)
        self.tracker.log_params(self.run_id, {f"{prefix}model.key": model_key,
                         f"{prefix}model.architecture": (spec.name or spec.uri) if spec else type(model).__name__,
                         f"{prefix}model.parameters": sum(p.numel() for p in model.parameters()),
                         f"{prefix}model.trainable_parameters": sum(p.numel() for p in model.parameters()
                                                                    if p.requires_grad)})
        self.log_text(str(model), f"model/{prefix}architecture.txt")
        data = task.data
        columns = {"index": data.index.numpy()}
        if data.labels.ndim == 1:  # hard labels (soft targets are rows of probabilities)
            columns["label"] = data.labels.numpy()
        self.log_dataset(pl.DataFrame(columns), f"{self.stage.name}-{prefix}train", "training")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    @staticmethod
    def confidence_histogram(confidence, selected=None):
        """A histogram figure of pseudo-label confidences (all scored images, and the selected ones)."""
        from .tracking.plots import confidence_histogram

        return confidence_histogram(confidence, selected)

    @contextlib.contextmanager
    def nested(self, name: str, tags: dict[str, str] | None = None):
        """A child MLflow run under the stage's (a round, a phase); reused on resume.

        Inside the block, ``log_*`` and ``fit`` record into the child.
        """
        tracker, parent = self.tracker, self.run_id
        child = next((r.info.run_id for r in tracker.children(parent) if r.data.tags.get("mentor.child") == name),
                     None)
        if child is None:
            child = tracker.start_run(f"{self.stage.name}/{name}", {
                "mentor.kind": "child", "mentor.child": name, "mentor.stage": self.stage.name,
                "mentor.method": self.stage.kind, **(tags or {})}, parent=parent)
        else:
            tracker.reopen(child)
        self.run_id = child
        status = "FAILED"
        try:
            yield child
            status = "FINISHED"
        except (KeyboardInterrupt, StopRun):
            status = "KILLED"
            raise
        finally:
            self.run_id = parent
            tracker.flush()
            tracker.end_run(child, status)
