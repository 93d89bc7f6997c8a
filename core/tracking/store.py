"""Where runs are recorded: the MLflow tracking URI and the experiment."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DIR = Path("mlruns")
EXPERIMENT_KIND = "mlflow.experimentKind"
opened: list[str] = []  # the stores this process opened, last one last: named when one fails (a full disk)


def tracking_uri(configured: str | None = None) -> str:
    """The experiment file's URI, else MLFLOW_TRACKING_URI, else sqlite under mlruns/."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_DIR.mkdir(exist_ok=True)
    # absolute: MLflow caches stores by URI, so a relative one would follow the first cwd
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def local_folder(uri: str) -> Path | None:
    """The folder a local store writes to (its database's), or None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://").removeprefix("file:"))
    return Path(uri) if "://" not in uri else None


def disk_full_message(exc: BaseException) -> str | None:
    """What to say when ``exc`` (or what caused it) is a full disk: which store, how much space was free; None
    for anything else. SQLite says "database or disk is full", the system ENOSPC."""
    import errno
    import shutil

    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if getattr(cause, "errno", None) == errno.ENOSPC or "disk is full" in str(cause) or \
                "No space left on device" in str(cause):
            break
        cause = cause.__cause__ or cause.__context__
    else:
        return None
    store = opened[-1] if opened else None
    folder = local_folder(store) if store else Path.cwd()
    where = f"the tracking store {store}" if store else "the working folder"
    free = ""
    if folder is not None:
        try:
            free = f"; {shutil.disk_usage(folder if folder.exists() else folder.parent).free / 1e6:,.1f} MB free " \
                   f"at {folder}"
        except OSError:
            pass
    return (f"error: the disk under {where} is full{free}. Free some space (`mentor cache` lists the shared caches) "
            "or set tracking.uri to a store on another disk, then resume the run with `mentor run FILE --resume`")


def artifact_root(uri: str) -> str | None:
    """For a local SQLite store, artifacts go beside the database; a server decides itself."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent.resolve() / "artifacts").as_uri()
    return None


def get_or_create_experiment(client, name: str, uri: str) -> str:
    """The experiment's id, created if needed, with the runs view `mentor ui` opens (see ui_view)."""
    from .ui_view import VIEW_TAG, publish_runs_view, runs_view

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        publish_runs_view(client, found.experiment_id, found.tags)
        return found.experiment_id
    root = artifact_root(uri)
    location = f"{root}/{name}" if root else None
    try:
        # the kind tag tells the MLflow UI this is model training, not a GenAI app (its traces overview)
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND: "custom_model_development", VIEW_TAG: runs_view()})
    except Exception:  # created meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id

