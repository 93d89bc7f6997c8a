"""Exported models as MLflow models, and the MLflow model registry.

An ONNX file is logged with ``mlflow.onnx.log_model`` (signature, input
example, the preprocessing record as metadata). A registered version is one
MLflow model with two flavors, ``pytorch`` and (when the stage exported)
``onnx``, so that both ``mlflow.pytorch.load_model`` and
``mlflow.onnx.load_model`` open the same ``models:/<name>/<version>``.
The registered model's ``mentor.architecture`` tag guards its name: a version
of another architecture is refused.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..tracking.tracker import fluent_tracking_uri
from .preprocess import KEY, Preprocess

ARCHITECTURE_TAG = "mentor.architecture"


class RegistryConflict(Exception):
    """The registered model name is taken by a model of another architecture."""


def _requirements() -> list[str]:
    import mlflow
    import onnxruntime

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
            f"onnxruntime=={onnxruntime.__version__}"]


def _signature(example: np.ndarray, logits: np.ndarray):
    from mlflow.models import infer_signature

    return infer_signature(example, logits)


def log_onnx_model(uri: str, run_id: str, path: Path, name: str, example: np.ndarray, logits: np.ndarray,
                   preprocess: Preprocess) -> str:
    """Log the ONNX file ``path`` as MLflow model ``name`` of run ``run_id``; returns its model URI."""
    import mlflow
    import mlflow.onnx
    import onnx

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    with fluent_tracking_uri(uri), mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.onnx.log_model(onnx.load(str(path)), name=name, input_example=example,
                                     signature=_signature(example, logits), save_as_external_data=False,
                                     metadata={KEY: preprocess.to_dict()}, pip_requirements=_requirements())
    from mlflow import MlflowClient

    MlflowClient(uri).update_run(run_id, status="RUNNING")  # start_run(run_id=...) ended it on exit
    return info.model_uri


def check_registrable(client, name: str, architecture: str) -> None:
    """Refuse ``name`` when the registry holds it for another architecture (before anything trains)."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        return  # a new name
    held = registered.tags.get(ARCHITECTURE_TAG)
    if held is not None and held != architecture:
        raise RegistryConflict(f"the registered model '{name}' holds {held}, not {architecture}: choose another "
                               "name in tracking.register")


def register(uri: str, run_id: str, model: torch.nn.Module, name: str, *, architecture: str, example: np.ndarray,
             preprocess: Preprocess, onnx_path: Path | None, tags: dict[str, str], description: str):
    """Log ``model`` (and its ONNX file) as one two-flavor MLflow model under ``registry/<name>`` of run
    ``run_id`` and register it as a new version of ``name``; returns the ``ModelVersion``."""
    import mlflow
    import mlflow.onnx
    import mlflow.pytorch
    from mlflow import MlflowClient
    from mlflow.models import Model

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    client = MlflowClient(uri)
    check_registrable(client, name, architecture)
    model = model.float().cpu().eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    signature = _signature(example, logits)
    artifact_path = f"registry/{name.replace('/', '_')}"
    with tempfile.TemporaryDirectory() as tmp:
        both = Path(tmp) / "model"
        mlflow.pytorch.save_model(model, str(both), serialization_format="pickle", signature=signature,
                                  input_example=example, metadata={KEY: preprocess.to_dict()},
                                  pip_requirements=_requirements())
        if onnx_path is not None:
            import onnx

            alone = Path(tmp) / "onnx"
            mlflow.onnx.save_model(onnx.load(str(onnx_path)), str(alone), save_as_external_data=False)
            flavor = Model.load(str(alone)).flavors["onnx"]
            shutil.copy(alone / flavor["data"], both / flavor["data"])
            combined = Model.load(str(both))
            combined.add_flavor("onnx", **flavor)
            combined.save(str(both / "MLmodel"))
        client.log_artifacts(run_id, str(both), artifact_path)
    try:
        client.create_registered_model(name, tags={ARCHITECTURE_TAG: architecture}, description=description)
    except mlflow.exceptions.MlflowException:
        client.set_registered_model_tag(name, ARCHITECTURE_TAG, architecture)  # it exists for this architecture
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    return client.create_model_version(name, source, run_id=run_id, tags=tags, description=description)
