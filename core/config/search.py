"""The ``search:`` block of an experiment file, and its checks against the experiment.

pydantic checks each part's shape (pass 1 of the loader). What needs the whole
experiment is checked in pass 2 by :func:`check`: every searched path exists,
every value the space can produce is valid there (its bounds, its midpoint,
each choice), and the metric names a stage's summary metric.
"""

from __future__ import annotations

import copy
import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..params import Params
from ..summary import canonical, split_summary, summary_name

#: What a stage reports once it ends (``<stage>/best.val.accuracy`` on the parent run).
SUMMARY_METRICS = ("val/accuracy", "test/accuracy", "val/loss", "test/loss")




def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("search_space", message)


class ParamSpec(Params):
    """One searched field: exactly one of ``float: [low, high]``, ``int: [low, high]``
    or ``categorical: [choices]``; ``log`` and ``step`` for the numeric kinds."""

    # "float" and "int" in the file; attribute names that do not shadow the builtins
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    float_: tuple[float, float] | None = Field(default=None, alias="float", description="[low, high]")
    int_: tuple[int, int] | None = Field(default=None, alias="int", description="[low, high]")
    categorical: list[Any] | None = Field(default=None, min_length=1, description="the choices")
    log: bool = Field(default=False, description="sample on a log scale (low > 0)")
    step: float | None = Field(default=None, gt=0, description="discretisation step (grid sampler)")

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        kinds = [k for k in ("float", "int", "categorical") if self.value_of(k) is not None]
        if len(kinds) != 1:
            raise _error("give exactly one of float: [low, high], int: [low, high] or categorical: [choices]")
        if self.kind == "categorical":
            if self.log or self.step is not None:
                raise _error("log and step apply to float and int ranges only")
            keys = [repr(c) for c in self.categorical]
            if len(set(keys)) != len(keys):
                raise _error("the choices must be distinct")
            return self
        low, high = self.bounds
        if low > high:
            raise _error(f"low ({low}) is above high ({high})")
        if self.log and low <= 0:
            raise _error("a log scale needs low > 0")
        if self.log and self.step is not None:
            raise _error("log and step cannot be combined")
        if self.kind == "int" and self.step is not None and self.step != int(self.step):
            raise _error("an int range needs a whole step")
        return self

    def value_of(self, kind: str) -> Any:
        return {"float": self.float_, "int": self.int_, "categorical": self.categorical}[kind]

    @property
    def kind(self) -> str:
        return "float" if self.float_ is not None else "int" if self.int_ is not None else "categorical"

    @property
    def bounds(self) -> tuple[float, float]:
        return self.float_ if self.float_ is not None else self.int_

    def candidates(self) -> list[Any]:
        """Values that stand for everything the spec can produce: bounds and midpoint, or each choice."""
        if self.kind == "categorical":
            return list(self.categorical)
        low, high = self.bounds
        middle = (low * high) ** 0.5 if self.log else (low + high) / 2
        if self.kind == "int":
            middle = int(round(middle))
        return list(dict.fromkeys([low, middle, high]))


class SamplerConfig(Params):
    name: Literal["tpe", "random", "grid"] = Field(default="tpe", description="grid: every combination")
    seed: int | None = Field(default=None, description="reproducible sampling; worker i of --workers uses seed + i")
    n_startup_trials: int = Field(default=10, ge=0, description="tpe: random trials before modelling")


class MedianPrunerConfig(Params):
    """Stop a trial whose value at a step is worse than the median of earlier trials there."""

    name: Literal["median"] = "median"
    n_startup_trials: int = Field(default=5, ge=0, description="trials that run in full before pruning starts")
    n_warmup_steps: int = Field(default=0, ge=0, description="evaluations of a trial before it may be pruned")
    interval_steps: int = Field(default=1, ge=1)


class HyperbandPrunerConfig(Params):
    """Successive halving over brackets (Li et al. 2018)."""

    name: Literal["hyperband"]
    min_resource: int = Field(default=1, ge=1, description="evaluations every trial gets")
    max_resource: int | Literal["auto"] = Field(default="auto", description="evaluations of a full trial")
    reduction_factor: int = Field(default=3, ge=2)


class ThresholdPrunerConfig(Params):
    """Stop a trial whose value leaves [lower, upper] (e.g. a diverging loss)."""

    name: Literal["threshold"]
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _a_bound(self) -> ThresholdPrunerConfig:
        if self.lower is None and self.upper is None:
            raise _error("give lower, upper or both")
        return self


class NoPrunerConfig(Params):
    name: Literal["none"]


PrunerConfig = Annotated[
    MedianPrunerConfig | HyperbandPrunerConfig | ThresholdPrunerConfig | NoPrunerConfig,
    Field(discriminator="name"),
]


class SearchConfig(Params):
    """Hyperparameter search over this experiment with Optuna (``mentor sweep``)."""

    metric: str = Field(description="the value of a trial: '<stage>/best.<metric>', '<stage>/kept.<metric>' or "
                        "'<stage>/last.<metric>', e.g. 'student/best.val.accuracy'")
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None, description="default: minimize a metric ending in 'loss', else maximize"
    )
    trials: int = Field(default=20, ge=1, description="the study's size: workers stop once it holds this many")
    space: dict[str, ParamSpec] = Field(min_length=1, description="dotted config path -> its range or choices")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=MedianPrunerConfig)
    seeds: list[int] | None = Field(
        default=None, min_length=1, description="run each trial once per seed; its value is the mean"
    )

    @property
    def goal(self) -> str:
        """The direction, said or inferred from the metric's name."""
        return self.direction or ("minimize" if self.metric.endswith("loss") else "maximize")

    @field_validator("metric")
    @classmethod
    def _summary_form(cls, metric: str) -> str:
        """``student/best/val/accuracy`` (the older form) is read as ``student/best.val.accuracy``."""
        stage, sep, rest = metric.partition("/")
        return f"{stage}/{canonical(rest)}" if sep else metric

    @property
    def stage(self) -> str:
        return self.metric.split("/", 1)[0]

    @property
    def summary_key(self) -> str:
        """The metric within its stage's result (``best.val.accuracy``)."""
        return self.metric.split("/", 1)[1]

    @property
    def epoch_metric(self) -> str:
        """The per-epoch metric that feeds the pruner (``val/accuracy``)."""
        return (split_summary(self.summary_key) or ("", self.summary_key))[1]


# --- pass 2: the search block against the experiment --------------------------------------


def check(experiment, registry) -> list[tuple[tuple, str]]:
    """Problems of ``experiment.search`` as (location in the file, message) pairs."""
    search: SearchConfig = experiment.search
    problems = [(("search", "metric"), message) for message in _metric_problems(search, experiment)]
    base = experiment.model_dump(mode="json")
    base.pop("search", None)
    for key, spec in search.space.items():
        where = ("search", "space", key)
        message = _path_problem(key, experiment)
        if message is None:
            message = _value_problem(key, spec, base, registry)
        if message is None and search.sampler.name == "grid" and spec.kind == "float" and spec.step is None:
            message = "the grid sampler needs a step for a float range (or categorical choices)"
        if message:
            problems.append((where, message))
    return problems


def _metric_problems(search: SearchConfig, experiment) -> list[str]:
    stages = [s.name for s in experiment.stages]
    stage, _, rest = search.metric.partition("/")
    summary = split_summary(rest)
    if summary is None:
        return [f"expected '<stage>/best.<metric>', '<stage>/kept.<metric>' or '<stage>/last.<metric>', "
                f"e.g. '{stages[-1]}/best.val.accuracy'"]
    from ..registry import unknown_name_message

    kind, metric = summary
    out = []
    if stage not in stages:
        out.append(unknown_name_message("stage", stage, stages))
    if metric.startswith("test/"):
        out.append(f"'{metric}' would choose hyperparameters by the test set, which then no longer measures "
                   f"anything unseen: search on '{stage}/{summary_name(kind, 'val/' + metric.split('/', 1)[1])}'")
    elif metric not in SUMMARY_METRICS:
        out.append(unknown_name_message("summary metric", metric, list(SUMMARY_METRICS)))
    return out


def _path_problem(key: str, experiment) -> str | None:
    """Why ``key`` names nothing in the experiment, or None when it does."""
    from .document import parse_path
    from .errors import dotted

    try:
        path = parse_path(key)
    except ValueError as exc:
        return str(exc)
    if path[0] in ("search", "name", "tracking"):
        return f"'{path[0]}' cannot be searched (every trial records into the sweep's MLflow experiment)"
    node: Any = experiment
    for depth, part in enumerate(path):
        here = dotted(path[:depth]) or "the top level"
        if isinstance(node, BaseModel):
            fields = [name for name, info in type(node).model_fields.items() if not info.exclude]
            if part not in fields:
                return _unknown(part, fields, here)
            node = getattr(node, part)
        elif isinstance(node, dict):
            if str(part) not in node:
                return _unknown(part, [str(k) for k in node], here)
            node = node[str(part)]
        elif isinstance(node, (list, tuple)):
            if not isinstance(part, int) or not 0 <= part < len(node):
                return f"no item [{part}] in {here} (it has {len(node)}: [0] to [{len(node) - 1}])"
            node = node[part]
        else:
            return f"{here} is a value ({node!r}), it has no field '{part}'"
    return None


def _unknown(part, known: list[str], here: str) -> str:
    close = difflib.get_close_matches(str(part), known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"no field '{part}' in {here}{hint} (known: {', '.join(known) or 'none'})"


def _value_problem(key: str, spec: ParamSpec, base: dict, registry) -> str | None:
    """Validate the experiment with each candidate value at ``key``: the first invalid one, said."""
    from .document import Document, parse_path, set_path
    from .errors import ConfigError
    from .loader import validate_document

    for value in spec.candidates():
        data = copy.deepcopy(base)
        set_path(data, parse_path(key), value)
        try:
            validate_document(Document(f"{key}={value!r}", data), registry)
        except ConfigError as exc:
            first = exc.problems[0]
            where = f" ({first.path})" if first.path and first.path != _dotted_key(key) else ""
            return f"the value {value!r} is not valid here{where}: {first.message}"
    return None


def _dotted_key(key: str) -> str:
    from .document import parse_path
    from .errors import dotted

    return dotted(parse_path(key))
