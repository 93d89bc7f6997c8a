"""Hyperparameter search with Optuna, every trial recorded in MLflow (``mentor sweep``).

One module per idea: ``config`` (the ``search:`` block and its checks),
``space`` (samplers, pruners, sampling, a trial's config), ``storage`` (where
the study lives), ``trial`` (one trial, pruning), ``runs`` (the MLflow runs),
``report`` (best config, plots) and ``sweep`` (workers, from start to end).
"""

from ..config.search import SearchConfig

_LAZY = {"Sweep": "sweep", "SweepError": "sweep", "run_sweep": "sweep"}


def __getattr__(name: str):
    if name in _LAZY:  # lazily: the schema imports this package, the sweep pulls in MLflow
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mentor.search' has no attribute '{name}'")


__all__ = ["SearchConfig", "Sweep", "SweepError", "run_sweep"]
