"""Models logged in MLflow, read back as torch modules (a teacher given by ``uri:``)."""

from __future__ import annotations

import contextlib
import logging
import os

from .store import tracking_uri
from .tracker import fluent_tracking_uri


@contextlib.contextmanager
def no_download_bar():
    """MLflow's artifact download bar off for a block (a local copy needs none), then as it was."""
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


class ModelNotFound(Exception):
    """An MLflow model URI names no model in the store (unknown run, path, name, version or alias)."""


def logged_preprocess(uri: str, configured_store: str | None = None) -> dict | None:
    """The input pipeline recorded with a logged model (its ``mentor.preprocess`` metadata), or None."""
    import mlflow.models
    from mlflow.exceptions import MlflowException

    try:
        with no_download_bar(), fluent_tracking_uri(tracking_uri(configured_store)):
            metadata = mlflow.models.get_model_info(uri).metadata or {}
    except (MlflowException, OSError, ValueError):
        return None  # loading the model itself says what is wrong with the uri
    return metadata.get("mentor.preprocess")


def load_logged_model(uri: str, configured_store: str | None = None):
    """``mlflow.pytorch.load_model(uri)`` against the experiment's tracking store (the registry too).

    The store is ``tracking.uri``, else MLFLOW_TRACKING_URI, else mentor's
    default SQLite file, as for the runs mentor records, so the
    ``runs:/<run id>/<stage>-<key>`` of an earlier run resolves where it was logged.
    """
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # the pickle-format caution, every load
    store = tracking_uri(configured_store)
    try:
        with no_download_bar(), fluent_tracking_uri(store):
            return mlflow.pytorch.load_model(uri, map_location="cpu")
    except MlflowException as exc:
        raise ModelNotFound(f"{uri}: {exc.message} (tracking store {store})") from None
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{uri}: cannot load it ({type(exc).__name__}: {exc}) (tracking store {store})") \
            from None
