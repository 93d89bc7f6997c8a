"""Batch prediction over image files with the preprocessing a model was trained with (``mentor predict``).

Why here and not in a script: the model file says how its images must be
prepared (``mentor.deploy.preprocess``), and the pool rules of
``mentor.data.pool`` decode them exactly as a pool is decoded at training.
Images stream through ``ImagePool.batches`` and results are appended to a
parquet file chunk by chunk, so memory stays bounded whatever the number of
images.

A model is given as an ``.onnx`` file, a local MLflow model folder, an MLflow
model URI (``runs:/``, ``models:/``), or the id of a mentor run (a stage run, or
an experiment run: its last stage with a model); an ONNX flavor is preferred
over a PyTorch one (ONNX Runtime is faster on a CPU).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.loader import normalise
from ..data.pool import ImagePool, read_image
from .predict_inputs import PredictBatch, PredictError, list_inputs
from .preprocess import KEY, Preprocess

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
URI_SCHEMES = ("runs:/", "models:/")
CHUNK_ROWS = 16384  # rows per parquet row group: bounded memory, few groups
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass
class LoadedModel:
    """A model ready for normalised float batches, what it expects of an image, and what was loaded."""

    logits: Callable[[torch.Tensor], np.ndarray]
    preprocess: Preprocess
    description: str


@dataclass
class PredictSummary:
    predicted: int
    skipped: int
    out: Path
    skipped_file: Path | None


# -- the model ----------------------------------------------------------------------------------------------------

def load_model(spec: str, tracking_uri: str | None = None) -> LoadedModel:
    """The model ``spec`` names: an .onnx file, an MLflow model folder, an MLflow model URI or a run id."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".onnx":
            raise PredictError(f"{spec}: not a model (expected an .onnx file, an MLflow model folder, "
                               "a runs:/ or models:/ URI, or a run id)")
        return _onnx_file(path)
    if path.is_dir():
        if not (path / "MLmodel").is_file():
            raise PredictError(f"{spec}: a folder without an MLmodel file, so not an MLflow model")
        return _mlflow_folder(path, spec)
    if spec.startswith(URI_SCHEMES):
        return _from_store(spec, tracking_uri, lambda client: spec)
    if RUN_ID.match(spec):
        return _from_store(spec, tracking_uri, lambda client: _run_model_uri(client, spec))
    raise PredictError(f"model {spec} does not exist (expected an .onnx file, an MLflow model folder, "
                       "a runs:/ or models:/ URI, or a run id)")


def _onnx_file(path: Path, preprocess: Preprocess | None = None, shown: str | None = None) -> LoadedModel:
    """An ONNX Runtime session; the record given (an MLflow model's), else the file's own."""
    from .onnx_export import OnnxModel

    shown = shown or str(path)
    model = OnnxModel(path)
    try:
        preprocess = preprocess or model.preprocess
    except ValueError as exc:
        raise PredictError(f"{shown}: {exc}") from None
    if preprocess is None:
        raise PredictError(f"{shown}: the ONNX file carries no preprocessing record (metadata key {KEY}); "
                           "export it with mentor (mentor.deploy.onnx_export.export_onnx with a Preprocess)")
    return LoadedModel(model.logits, preprocess, f"{shown} (onnx)")


def _mlflow_folder(folder: Path, shown: str) -> LoadedModel:
    """An MLflow model on disk: its ONNX flavor if it has one, else its PyTorch flavor."""
    from mlflow.models import Model

    mlmodel = Model.load(str(folder))
    preprocess = _record(mlmodel.metadata, shown)
    if "onnx" in mlmodel.flavors:
        onnx_file = folder / mlmodel.flavors["onnx"].get("data", "model.onnx")
        return _onnx_file(onnx_file, preprocess, shown)
    if "pytorch" not in mlmodel.flavors:
        raise PredictError(f"{shown}: an MLflow model with neither an onnx nor a pytorch flavor "
                           f"(flavors: {', '.join(mlmodel.flavors)})")
    if preprocess is None:
        raise PredictError(f"{shown}: the model carries no preprocessing record ({KEY} in its MLmodel metadata): "
                           "it was logged before mentor recorded one; `mentor export <its stage run id>` logs "
                           "an ONNX model with the record beside it")
    import logging

    import mlflow.pytorch

    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # the pickle-format caution, every load
    module = mlflow.pytorch.load_model(str(folder), map_location="cpu").float().eval()

    def logits(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).float().numpy()

    return LoadedModel(logits, preprocess, f"{shown} (pytorch)")


def _record(metadata: dict | None, shown: str) -> Preprocess | None:
    """The preprocessing record of an MLmodel's metadata (a dict, or its JSON text), or None."""
    data = (metadata or {}).get(KEY)
    if data is None:
        return None
    try:
        return Preprocess.from_json(data) if isinstance(data, str) else Preprocess.from_dict(data)
    except ValueError as exc:
        raise PredictError(f"{shown}: {exc}") from None


@contextlib.contextmanager
def _store(tracking_uri: str | None) -> Iterator[str]:
    """MLflow's fluent API pointed at mentor's store, without the download bar, for a block."""
    from ..tracking.models import no_download_bar
    from ..tracking.store import tracking_uri as resolve
    from ..tracking.tracker import check_reachable, fluent_tracking_uri

    uri = resolve(tracking_uri)
    check_reachable(uri)
    with no_download_bar(), fluent_tracking_uri(uri):
        yield uri


def _from_store(spec: str, tracking_uri: str | None, model_uri: Callable) -> LoadedModel:
    """Download the model ``model_uri(client)`` names from the tracking store, then load it as a folder."""
    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from ..tracking.models import no_download_bar

    with _store(tracking_uri) as uri:
        try:
            resolved = model_uri(MlflowClient(uri))
            with tempfile.TemporaryDirectory(prefix="mentor-predict-") as tmp, no_download_bar():
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=resolved, dst_path=tmp,
                                                                 tracking_uri=uri))
                folder = local if (local / "MLmodel").is_file() else next(
                    (p.parent for p in local.rglob("MLmodel")), None)
                if folder is None:
                    raise PredictError(f"{spec}: {resolved} is not an MLflow model (no MLmodel file)")
                shown = spec if resolved == spec else f"{spec} ({resolved})"
                return _mlflow_folder(folder, shown)  # both flavors read the files now, not later
        except MlflowException as exc:
            raise PredictError(f"{spec}: {exc.message} (tracking store {uri})") from None
        except OSError as exc:
            raise PredictError(f"{spec}: cannot read it ({type(exc).__name__}: {exc}) (tracking store {uri})") \
                from None


def _run_model_uri(client, run_id: str) -> str:
    """The model URI of a mentor run: a stage run's logged model (its ONNX one first), or for an experiment
    run, that of its last stage run that logged one."""
    run = client.get_run(run_id)
    if run.data.tags.get("mentor.kind") == "experiment":
        stages = client.search_runs([run.info.experiment_id],
                                    f"tags.`mlflow.parentRunId` = '{run_id}' and tags.`mentor.kind` = 'stage'",
                                    order_by=["attributes.start_time DESC"], max_results=1000)
        for stage in stages:
            found = _logged_model(client, stage)
            if found is not None:
                return found
        raise PredictError(f"run {run_id} ({run.info.run_name}): none of its "
                           f"{len(stages)} stage runs logged a model (tracking.log_model off?)")
    found = _logged_model(client, run)
    if found is None:
        raise PredictError(f"run {run_id} ({run.info.run_name}) logged no model")
    return found


def _logged_model(client, run) -> str | None:
    """``models:/<id>`` of the run's ONNX model if it has one, else of its last logged model; None if none."""
    models = list(client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                              filter_string=f"source_run_id = '{run.info.run_id}'"))
    if not models:
        return None
    models.sort(key=lambda m: (m.name.endswith("-onnx"), m.creation_timestamp or 0))
    return f"models:/{models[-1].model_id}"


# -- the images ---------------------------------------------------------------------------------------------------

def _native_shape(path: str) -> tuple[int, int, int]:
    """(channels without alpha, height, width) of an image file as ``mentor.data.pool`` decodes it."""
    try:
        from PIL import Image

        with Image.open(path) as im:  # the header only
            width, height = im.size
            return (1 if im.mode in GRAY_MODES else 3), height, width
    except Exception:  # a format Pillow cannot open that torchvision decoded
        image = read_image(path)
        channels = image.shape[0] - 1 if image.shape[0] in (2, 4) else image.shape[0]
        return int(channels), int(image.shape[1]), int(image.shape[2])


def _check_native(path: str, shown: str, preprocess: Preprocess) -> None:
    channels, height, width = _native_shape(path)
    if (channels, height, width) != (preprocess.channels, preprocess.height, preprocess.width):
        def plural(n):
            return f"{n} channel" + ("" if n == 1 else "s")

        raise PredictError(f"{shown}: {height}x{width} with {plural(channels)}; the model expects "
                           f"{preprocess.height}x{preprocess.width} with {plural(preprocess.channels)} "
                           "(drop --no-resize to convert it as in training)")


# -- prediction ---------------------------------------------------------------------------------------------------

def _schema():
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("class", pa.string()), ("index", pa.int64()),
                      ("probability", pa.float32()), ("top_classes", pa.list_(pa.string())),
                      ("top_probabilities", pa.list_(pa.float32()))])


def _progress(total: int, mode: str):
    """A rich bar on a terminal, nothing elsewhere (the final line says what was done)."""
    from ..engine.progress import choose_mode

    if choose_mode(mode) != "bar":
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), transient=False)
    bar.start()
    bar.add_task("predict", total=total)
    return bar


class _Skipped:
    """Undecodable files, written to a csv as they come (opened at the first one), in place at the end."""

    def __init__(self, path: Path):
        self.path, self.count = path, 0
        self.partial = path.with_name(path.name + ".partial")
        self._file = self._csv = None

    def add(self, path: str, error: str) -> None:
        if self._csv is None:
            self._file = open(self.partial, "w", newline="")  # noqa: SIM115 - closed by close()
            self._csv = csv.writer(self._file)
            self._csv.writerow(["path", "error"])
        self._csv.writerow([path, error])
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def commit(self) -> None:
        """The list replaces an earlier run's (which, with nothing skipped now, would mislead)."""
        self.close()
        if self.count:
            os.replace(self.partial, self.path)
        else:
            self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        self.close()
        self.partial.unlink(missing_ok=True)


class _Rows:
    """Prediction rows waiting for their row group."""

    def __init__(self):
        self.columns: dict[str, list] = {name: [] for name in _schema().names}

    def __len__(self) -> int:
        return len(self.columns["path"])

    def add(self, paths: list[str], top_p: torch.Tensor, top_i: torch.Tensor, preprocess: Preprocess) -> None:
        for path, p_row, i_row in zip(paths, top_p.tolist(), top_i.tolist(), strict=True):
            names = [preprocess.label(c) for c in i_row]
            for column, value in (("path", path), ("class", names[0]), ("index", i_row[0]),
                                  ("probability", p_row[0]), ("top_classes", names), ("top_probabilities", p_row)):
                self.columns[column].append(value)

    def flush(self, writer) -> None:
        import pyarrow as pa

        if len(self):
            writer.write_table(pa.table(self.columns, schema=_schema()))  # one row group per chunk
            for column in self.columns.values():
                column.clear()


def image_batches(sources: Sequence[str | Path], pre: Preprocess, batch_size: int, *, workers: int = 2,
                  resize: bool = True) -> Iterator[PredictBatch]:
    """Image files, folders, globs and lists (``list_inputs``) decoded in batches as ``pre`` says: the
    image modality's ``predict_batches``. ``resize=False``: a file not already in the model's form is an error."""
    return decoded(*list_inputs(sources), pre, batch_size, workers=workers, resize=resize)


def decoded(paths: list[str], shown: list[str], pre: Preprocess, batch_size: int, *, workers: int,
            resize: bool) -> Iterator[PredictBatch]:
    """``image_batches`` of listed ``paths`` (reported as ``shown``)."""
    shown_of = dict(zip(paths, shown, strict=True))
    for images, index, bad in ImagePool(paths).batches(pre.channels, pre.size, batch_size, workers=workers):
        rows = [] if images is None else index.tolist()
        if not resize:
            for i in rows:
                _check_native(paths[i], shown[i], pre)
        yield PredictBatch(images, [shown[i] for i in rows], [(shown_of[p], e) for p, e in bad])


def predict_images(model: LoadedModel, source: Path | str | Sequence[Path | str], out: Path, top_k: int = 5,
                   batch_size: int = 256, workers: int = 2, resize: bool = True,
                   progress: str = "auto", modality=None) -> PredictSummary:
    """Top-``top_k`` classes and softmax probabilities of every input ``source`` holds (one source or several:
    image files, folders, globs and lists, ``list_inputs``; or what ``modality.predict_batches`` reads for a
    model of another modality), written to ``out``.

    Both files are written beside their names and renamed at the end, so a
    failed or interrupted run leaves an earlier run's output as it was, never a
    half file; unreadable inputs are listed in ``<out stem>.skipped.csv``.
    """
    import pyarrow.parquet as pq

    if workers < 0:
        raise PredictError(f"--workers {workers}: expected 0 (decode in this process) or more")
    sources = [str(source)] if isinstance(source, str | Path) else [str(s) for s in source]
    pre = model.preprocess
    if modality is None:
        paths, shown = list_inputs(sources)
        batches, total = decoded(paths, shown, pre, batch_size, workers=workers, resize=resize), len(paths)
    else:
        batches, total = modality.predict_batches(sources, pre, batch_size), 0
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    skipped = _Skipped(out.with_name(f"{out.stem}.skipped.csv"))
    rows, predicted = _Rows(), 0
    writer = pq.ParquetWriter(partial, _schema())
    bar = _progress(-(-total // batch_size), progress) if total else None
    try:
        for batch in batches:
            for name, error in batch.skipped:
                skipped.add(name, error)
            if batch.examples is not None and len(batch.names):
                x = normalise(batch.examples, pre.mean, pre.std)  # as the training loader does
                probabilities = torch.from_numpy(np.asarray(model.logits(x), np.float32)).softmax(1)
                top_p, top_i = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)  # largest first
                rows.add(batch.names, top_p, top_i, pre)
                predicted += len(batch.names)
                if len(rows) >= CHUNK_ROWS:
                    rows.flush(writer)
            if bar is not None:
                bar.advance(bar.task_ids[0])
        rows.flush(writer)
        writer.close()
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        skipped.discard()
        raise
    finally:
        if bar is not None:
            bar.stop()
    os.replace(partial, out)
    skipped.commit()
    return PredictSummary(predicted, skipped.count, out, skipped.path if skipped.count else None)
