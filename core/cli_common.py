"""What every ``mentor`` command shares: exit codes, the one-line error, loading an experiment file."""

from __future__ import annotations

import sys

EXIT_USAGE = 2  # a user's mistake: a located message, no traceback
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: recorded KILLED, resumable


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load(path: str, overrides: list[str]):
    """The validated experiment of ``path`` with ``--set`` overrides, and the installed plugins."""
    from .config import load_experiment
    from .plugins import default_plugins

    plugins = default_plugins()
    return load_experiment(path, overrides, plugins.registry), plugins
