"""From a declared space to Optuna: samplers, pruners, suggestions, and a trial's config.

Optuna's categorical choices must be scalars (None, bool, int, float, str); a
choice that is a list or a mapping (``channels: [8, 16]``) is offered to
Optuna as its JSON text and turned back into the value when applied.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import optuna

from ..config.search import ParamSpec, SearchConfig

_SCALARS = (type(None), bool, int, float, str)


def encode(choice: Any) -> Any:
    return choice if isinstance(choice, _SCALARS) else json.dumps(choice, sort_keys=True)


def decode(spec: ParamSpec, value: Any) -> Any:
    """The config value behind an Optuna parameter value."""
    if spec.kind != "categorical":
        return value
    return next((c for c in spec.categorical if encode(c) == value), value)


def sample(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Draw a value for every path of the space (keys as written in the file)."""
    values = {}
    for key, spec in space.items():
        if spec.kind == "categorical":
            drawn = trial.suggest_categorical(key, [encode(c) for c in spec.categorical])
        elif spec.kind == "int":
            drawn = trial.suggest_int(key, *spec.bounds, step=int(spec.step or 1), log=spec.log)
        else:
            drawn = trial.suggest_float(key, *spec.bounds, step=spec.step, log=spec.log)
        values[key] = decode(spec, drawn)
    return values


def decoded(params: dict[str, Any], space: dict[str, ParamSpec]) -> dict[str, Any]:
    """A finished trial's Optuna params as config values."""
    return {key: decode(space[key], value) for key, value in params.items() if key in space}


def apply(base: dict, values: dict[str, Any]) -> dict:
    """``base`` (a resolved config) with each searched path set to its value."""
    from ..config.document import parse_path, set_path

    config = copy.deepcopy(base)
    for key, value in values.items():
        set_path(config, parse_path(key), value)
    return config


def mlflow_key(key: str) -> str:
    """'stages[2].losses[1].params.temperature' -> 'stages.2.losses.1.params.temperature'
    (MLflow keys allow no brackets; the same form as the experiment run's flattened params)."""
    from ..config.document import parse_path

    return ".".join(str(part) for part in parse_path(key))


# --- samplers and pruners ------------------------------------------------------------------


def grid(space: dict[str, ParamSpec]) -> dict[str, list[Any]]:
    """Every value of each path, for the grid sampler (float ranges need a step)."""
    out = {}
    for key, spec in space.items():
        if spec.kind == "categorical":
            out[key] = [encode(c) for c in spec.categorical]
            continue
        low, high = spec.bounds
        step = spec.step or 1
        count = int((high - low) / step + 1e-9) + 1
        values = [round(low + i * step, 12) for i in range(count)]  # 0.30000000000000004 -> 0.3
        out[key] = [int(v) for v in values] if spec.kind == "int" else values
    return out


def grid_size(space: dict[str, ParamSpec]) -> int:
    size = 1
    for values in grid(space).values():
        size *= len(values)
    return size


def make_sampler(search: SearchConfig, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler; worker ``i`` of a ``--workers`` sweep draws with seed + i."""
    cfg = search.sampler
    seed = None if cfg.seed is None else cfg.seed + worker
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.name == "grid":
        return optuna.samplers.GridSampler(grid(search.space), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials)


def make_pruner(search: SearchConfig) -> optuna.pruners.BasePruner:
    cfg = search.pruner
    if cfg.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials,
                                           n_warmup_steps=cfg.n_warmup_steps, interval_steps=cfg.interval_steps)
    if cfg.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_resource, max_resource=cfg.max_resource,
                                              reduction_factor=cfg.reduction_factor)
    if cfg.name == "threshold":
        return optuna.pruners.ThresholdPruner(lower=cfg.lower, upper=cfg.upper, n_warmup_steps=cfg.n_warmup_steps)
    return optuna.pruners.NopPruner()
