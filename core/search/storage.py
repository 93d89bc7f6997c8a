"""Where a study lives, so that several processes (or machines) share it.

* default: a journal file, ``mlruns/sweeps/<study>/journal.log``; Optuna's
  ``JournalFileBackend`` locks it, so processes on one machine append safely;
* ``journal:PATH`` or a path ending in ``.log``: a journal file elsewhere
  (it must be on a disk with working locks: not NFS);
* an RDB URL (``postgresql+psycopg2://user:pw@host/db``, ``mysql://...``): for
  several machines. Workers send heartbeats; a trial whose worker stopped
  beating is failed by the next worker, and ``on_stale`` hears about it.

SQLite URLs work for one process at a time only (Optuna's own advice).
"""

from __future__ import annotations

import random
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna

from ..tracking.store import DEFAULT_DIR

HEARTBEAT_S = 30
GRACE_S = 120


class StorageError(Exception):
    """The study storage cannot be opened (bad URL, server unreachable, driver missing)."""


def sweep_dir(study: str) -> Path:
    """Local files of a sweep: the default journal, ``best.yaml``."""
    return DEFAULT_DIR / "sweeps" / study


def default_url(study: str) -> str:
    return f"journal:{(sweep_dir(study) / 'journal.log').resolve()}"


def masked(url: str) -> str:
    """The URL without its password, for messages and MLflow tags."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def is_rdb(url: str) -> bool:
    return "://" in url and not url.startswith("journal:")


def open_storage(url: str, on_stale: Callable | None = None) -> optuna.storages.BaseStorage:
    """The storage behind ``url`` (see the module docstring); StorageError if it cannot be opened."""
    if url.startswith("journal:") or (not is_rdb(url) and url.endswith((".log", ".journal"))):
        path = Path(url.removeprefix("journal:")).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend)
        except OSError as exc:
            raise StorageError(f"cannot open the journal file {path}: {exc}") from None
    if not is_rdb(url):
        raise StorageError(
            f"unknown study storage '{masked(url)}': give an RDB URL (postgresql+psycopg2://user:password@host/db) "
            "or a journal file (journal:PATH, or a path ending in .log)"
        )
    engine_kwargs = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        return _rdb_creating_schema_once(url, engine_kwargs, on_stale)
    except ModuleNotFoundError as exc:
        raise StorageError(f"study storage '{masked(url)}' needs the database driver '{exc.name}': "
                           f"pip install {'psycopg2-binary' if exc.name == 'psycopg2' else exc.name}") from None
    except Exception as exc:  # sqlalchemy's errors: bad URL, refused connection, bad password
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"cannot open study storage '{masked(url)}': {type(exc).__name__}: {reason}") from None


def _rdb_creating_schema_once(url: str, engine_kwargs: dict, on_stale: Callable | None,
                              attempts: int = 5) -> optuna.storages.RDBStorage:
    """Open the RDB storage, riding out the race of workers that create a fresh database's tables.

    Optuna creates its tables when a storage is first opened; two workers
    started together on an empty database both try, and PostgreSQL fails the
    loser with a unique-constraint error on its catalog. Opening again then
    finds the tables in place.
    """
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return _rdb(url, engine_kwargs, on_stale)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1) + random.random())


def _rdb(url: str, engine_kwargs: dict, on_stale: Callable | None) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite"):  # heartbeats need concurrent writers, which sqlite is not for
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=on_stale,
        )
