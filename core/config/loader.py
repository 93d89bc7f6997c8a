"""From a file to a validated experiment, with every error located.

Validation runs in two passes so that each part is checked by its owner:
1. pydantic validates the file against the experiment model, whose stage
   union is built from the registered methods (its errors are mapped back to
   the file in schema_errors.py);
2. each component's ``params`` is validated by that component's own model,
   references between models and stages are checked, and stage names filled in.
A file that fails pass 1 still gets pass 2's parameter checks on every part
that passes on its own, so that all its errors are reported at once.
"""

from __future__ import annotations

import functools
import operator
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, create_model

from ..params import path_fields
from ..registry import Registry, unknown_name_message
from .checkpoints import checkpoint_problems
from .document import Document, apply_overrides, read_document
from .errors import ConfigError, Problem, dotted
from .schema import ComponentSpec, ExperimentBase, ModelSpec, Ref, StageConfig
from .schema_errors import params_message, schema_problems


def experiment_model(registry: Registry) -> type[ExperimentBase]:
    """The experiment model for this set of plugins (stage kinds from methods)."""
    cached = getattr(registry, "_experiment_model", None)
    if cached is None:
        stage_models = []
        for name in registry.names("method"):
            config = registry.get("method", name).params
            if not (isinstance(config, type) and issubclass(config, StageConfig)):
                raise TypeError(f"method '{name}': its params model must subclass mentor.StageConfig")
            stage_models.append(
                create_model(
                    f"{config.__name__}",
                    __base__=config,
                    __doc__=config.__doc__,
                    kind=(Literal[name], Field(description=registry.get("method", name).description)),
                )
            )
        if not stage_models:
            raise TypeError("no stage kinds are registered: is mentor installed correctly?")
        stage = (
            stage_models[0]
            if len(stage_models) == 1
            else typing.Annotated[functools.reduce(operator.or_, stage_models), Field(discriminator="kind")]
        )
        cached = registry._experiment_model = create_model(
            "Experiment",
            __base__=ExperimentBase,
            __doc__=ExperimentBase.__doc__,
            stages=(list[stage], Field(min_length=1)),
        )
    return cached


def load_experiment(path: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None):
    """Read, override, validate and resolve an experiment file; raise ConfigError."""
    doc = read_document(path)
    apply_overrides(doc, overrides)
    return validate_document(doc, registry)


def validate_document(doc: Document, registry: Registry | None = None):
    if registry is None:
        from ..plugins import default_plugins

        registry = default_plugins().registry
    model = experiment_model(registry)
    # top-level keys starting with "x-" hold YAML anchors to reuse (as in compose files)
    data = {key: value for key, value in doc.data.items() if not str(key).startswith("x-")}
    try:
        experiment = model.model_validate(data)
    except ValidationError as exc:
        problems = schema_problems(doc, exc.errors(), registry, model)
        problems += _params_problems_of_valid_parts(doc, data, model, registry)
        raise ConfigError(_in_file_order(problems)) from None
    problems = resolve(experiment, registry, doc)
    if problems:
        raise ConfigError(_in_file_order(problems))
    experiment._document = doc
    return experiment


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    unique = list({(p.path, p.message): p for p in problems}.values())
    return sorted(unique, key=lambda p: (p.line is None, p.line or 0, p.column or 0))


def _params_problems_of_valid_parts(doc: Document, data: dict, model: type[BaseModel],
                                    registry: Registry) -> list[Problem]:
    """When the file fails pass 1, pass 2's component checks still run on each top-level section and each
    stage that validates on its own, so that one `mentor validate` reports every error of the file."""
    problems: list[Problem] = []

    def report(path: Sequence[str | int], message: str):
        source, line, col = doc.locate(path)
        problems.append(Problem(source, dotted(path), message, line, col))

    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        if key == "stages" and isinstance(value, list):
            adapter, parts = TypeAdapter(typing.get_args(field.annotation)[0]), list(enumerate(value))
            parts = [(("stages", i), item) for i, item in parts]
        else:
            adapter, parts = TypeAdapter(field.annotation), [((key,), value)]
        for path, raw in parts:
            try:
                part = adapter.validate_python(raw)
            except ValidationError:
                continue  # its own errors are pass 1's
            _check_components(part, registry, doc, report, path)
    return problems


# --- pass 2: components, references, names ---------------------------------------


def _specs(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, ComponentSpec]]:
    """Every ComponentSpec in a validated config, with its location."""
    if isinstance(obj, ComponentSpec):
        yield path, obj
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _specs(getattr(obj, name), path + (name,))
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _specs(item, path + (i,))
    elif isinstance(obj, dict):
        for key, item in obj.items():
            yield from _specs(item, path + (key,))


def references(stage: BaseModel) -> Iterator[tuple[str, Ref, str | int | None, str]]:
    """(field, Ref, index-in-list or None, value) for a stage's reference fields."""
    for name, info in type(stage).model_fields.items():
        ref = next((m for m in info.metadata if isinstance(m, Ref)), None)
        if ref is None:
            ref = _ref_in(info.annotation)
        if ref is None:
            continue
        value = getattr(stage, name)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                yield name, ref, i, item
        else:
            yield name, ref, None, value


def _ref_in(annotation: Any) -> Ref | None:
    """Find a Ref inside Optional[...] / list[...] annotations."""
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Annotated:
            ref = next((m for m in arg.__metadata__ if isinstance(m, Ref)), None)
            if ref:
                return ref
        found = _ref_in(arg)
        if found:
            return found
    return None


def _check_components(obj, registry: Registry, doc: Document | None, report, base: tuple = ()) -> None:
    """Each component named in ``obj`` exists and its ``params`` validate with its own model (then hold the
    validated values, paths resolved against the file's folder)."""
    for path, spec in _specs(obj, base):
        name = spec.component_name
        if name is None:  # a model given by `uri` alone: the loaded module is used as is
            continue
        table = registry.components[spec.kind]
        if name not in table:
            report(path + (spec.name_field,), unknown_name_message(spec.kind.replace("_", " "), name, list(table)))
            continue
        if isinstance(spec, ModelSpec) and spec.weights is not None:
            if "weights" not in table[name].params.model_fields:
                report(path + ("weights",), f"model '{name}' has no pretrained weights to choose "
                       "(use checkpoint or uri for weights of your own)")
                continue
            if spec.params.get("weights") is not None:
                report(path + ("weights",), "set only one of weights and params.weights")
                continue
            spec.params = {**spec.params, "weights": spec.weights}
        try:
            spec.params = table[name].params.model_validate(spec.params).model_dump()
        except ValidationError as exc:
            for err in exc.errors():
                report(path + ("params",) + tuple(err["loc"]), params_message(err, table[name].params))
            continue
        for field in path_fields(table[name].params):  # relative: from the experiment file's folder
            if isinstance(spec.params.get(field), str):
                spec.params[field] = str(_resolve_path(spec.params[field], doc, path + ("params", field)))
                if spec.kind in ("data_source", "unlabeled_source") and not spec.params.get("download") \
                        and not Path(spec.params[field]).exists():  # data read, not written: it must be there
                    report(path + ("params", field), f"no such file or folder: {spec.params[field]} (a relative "
                           "path is read from the experiment file's folder)")


def resolve(experiment, registry: Registry, doc: Document | None = None) -> list[Problem]:
    """Validate params with each component's model; check references; name stages."""
    problems: list[Problem] = []

    def report(path: Sequence[str | int], message: str):
        source, line, col = doc.locate(path) if doc else ("<config>", None, None)
        problems.append(Problem(source, dotted(path), message, line, col))

    _check_components(experiment, registry, doc, report)

    for key, spec in experiment.models.items():
        if spec.checkpoint is not None:
            where = ("models", key, "checkpoint")
            spec.checkpoint = str(_resolve_path(spec.checkpoint, doc, where))
            if not Path(spec.checkpoint).is_file():
                report(where, f"no such file: {spec.checkpoint} (a relative path is read from the experiment "
                       "file's folder)")
            elif spec.name is None or spec.name in registry.names("model"):
                for field, message in checkpoint_problems(spec, registry):
                    report(("models", key, field), message)

    seen: dict[str, int] = {}
    kinds = [stage.kind for stage in experiment.stages]
    for i, stage in enumerate(experiment.stages):
        if stage.name is None:
            stage.name = stage.kind if kinds.count(stage.kind) == 1 else f"{stage.kind}_{i}"
        if stage.name in seen:
            report(("stages", i, "name"), f"stage name '{stage.name}' is already used by stages[{seen[stage.name]}]")
        seen.setdefault(stage.name, i)
        for field, ref, index, value in references(stage):
            where = ("stages", i, field) + ((index,) if index is not None else ())
            if ref.target == "model" and value not in experiment.models:
                report(where, unknown_name_message("model", value, list(experiment.models)))
            elif ref.target == "stage" and value not in seen:
                earlier = [s.name for s in experiment.stages[:i]]
                report(where, unknown_name_message("earlier stage", value, earlier))
            elif ref.target == "stage" and seen[value] == i:
                report(where, "a stage cannot refer to itself")
            elif ref.target == "teacher":
                problem = _teacher_problem(experiment, i, value, seen)
                if problem:
                    report(where, problem)
    if not problems:
        for i, stage in enumerate(experiment.stages):
            for field, message in _init_problems(experiment, stage, seen, registry):
                report(("stages", i, field), message)
            for path, message in stage.check(experiment, registry):
                report(("stages", i, *path), message)
    if not problems:
        for path, message in _shipping_problems(experiment):
            report(path, message)
    if not problems and getattr(experiment, "search", None) is not None:
        from .search import check as check_search  # paths, values and metric, against this experiment

        for path, message in check_search(experiment, registry):
            report(path, message)
    return problems


def _shapes(spec: ModelSpec, registry: Registry) -> dict[str, tuple] | None:
    """The parameter and buffer shapes of a model spec, built on the meta device (no memory, no download);
    None when it cannot be built here (then the run reports it)."""
    import torch

    params = {k: v for k, v in spec.params.items() if k != "weights"}
    try:
        with torch.device("meta"):
            component = registry.get("model", spec.name)
            if component.takes_image_size:  # its shapes depend on the data's size, not known here
                return None
            model = component.factory(10, 3, **params)
    except Exception:  # a factory that needs real tensors: nothing to compare here
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _init_problems(experiment, stage, seen: dict[str, int], registry: Registry) -> Iterator[tuple[str, str]]:
    """An ``init:`` (or ``<model>_init:``) whose stage trained a model of other shapes than the one it
    starts: its weights could not be loaded, so say so now rather than after the stages before it."""
    for field, ref, _, value in references(stage):
        if ref.target != "stage" or not field.endswith("init") or value not in seen:
            continue
        own = trained_model_key(stage) if field == "init" else getattr(stage, field.removesuffix("_init"), None)
        source = trained_model_key(experiment.stages[seen[value]])
        if not (isinstance(own, str) and own in experiment.models and source in experiment.models) or own == source:
            continue
        a, b = experiment.models[own], experiment.models[source]
        if a.name is None or b.name is None:
            continue
        shapes_a, shapes_b = _shapes(a, registry), _shapes(b, registry)
        if shapes_a is not None and shapes_b is not None and shapes_a != shapes_b:
            yield field, (f"stage '{value}' trained models.{source} ({b.name}), whose weights do not fit "
                          f"models.{own} ({a.name}, other layer shapes): it cannot start it")


def _resolve_path(value: str, doc: Document | None, where: tuple) -> Path:
    """A path from the file, made absolute: relative to the file's folder (to the working directory for --set)."""
    path = Path(value).expanduser()
    if path.is_absolute() or doc is None or doc.locate(where)[0] == "--set" or not Path(doc.source).is_file():
        return path.resolve()
    return (Path(doc.source).resolve().parent / path).resolve()


def _teacher_problem(experiment, index: int, value: str, seen: dict[str, int]) -> str | None:
    """What is wrong with ``value`` as a teacher of stage ``index`` (a ``TeacherRef``), or None."""
    is_model = value in experiment.models
    is_stage = value in seen and seen[value] < index
    if is_stage and trained_model_key(experiment.stages[seen[value]]) is None:  # it trains nothing (evaluate)
        if not is_model:
            return f"stage '{value}' trains no model to use"
        is_stage = False
    if value in seen and seen[value] == index and not is_model:  # its own name, if a models key, is the model
        return "a stage cannot refer to itself"
    if is_stage:  # a name that is also a models key stands for the stage (a stage often trains its namesake)
        return None
    later = next((j for j, s in enumerate(experiment.stages) if j > index and s.name == value), None)
    later = None if is_stage else later
    if later is not None and not (is_model and experiment.models[value].has_weights):
        return f"unknown earlier stage '{value}' (stages[{later}] runs later)"
    if is_model and not experiment.models[value].has_weights:
        return (f"models.{value} has no weights: set checkpoint, weights or uri, or name a stage that "
                "trains it")
    if not (is_stage or is_model):
        earlier = [s.name for s in experiment.stages[:index]]
        keys = [k for k, spec in experiment.models.items() if spec.has_weights]
        what = "earlier stage or models key with weights" if keys else "earlier stage"
        return unknown_name_message(what, value, earlier + keys)
    return None


def _shipping_problems(experiment) -> Iterator[tuple[tuple, str]]:
    """``tracking.register`` names a stage that trains a model; ``report.reference`` a stage or models key."""
    trainers = [s.name for s in experiment.stages if trained_model_key(s) is not None]
    with_model = [s.name for s in experiment.stages if stage_model_key(experiment, s) is not None]
    register = experiment.tracking.register
    if register is not None:
        if register.stage is None and not trainers:
            yield ("tracking", "register"), "no stage trains a model to register (name one with a model: stage)"
        elif register.stage is not None and register.stage not in with_model:
            yield ("tracking", "register", "stage"), unknown_name_message("stage with a model",
                                                                          register.stage, with_model)
    report = getattr(experiment, "report", None)
    if report is not None and report.reference is not None:
        names = [s.name for s in experiment.stages] + list(experiment.models)
        if report.reference not in names:
            yield ("report", "reference"), unknown_name_message("stage or models key", report.reference, names)


def trained_model_key(stage: BaseModel) -> str | None:
    """The ``models`` key of the model a stage trains: its first model reference."""
    return next((value for _, ref, _, value in references(stage) if ref.target == "model"), None)


def stage_model_key(experiment, stage: BaseModel) -> str | None:
    """The ``models`` key of a stage's model: the one it trains, or for a stage that trains nothing
    (``evaluate``), the one it uses as it is. Either is exported, registered and predicted alike."""
    return trained_model_key(stage) or next(
        (teacher_model_key(experiment, v) for _, ref, _, v in references(stage) if ref.target == "teacher"), None)


def teacher_model_key(experiment, ref: str) -> str | None:
    """The ``models`` key behind a ``TeacherRef``: the key the named stage trains, or the key itself."""
    stage = next((s for s in experiment.stages if s.name == ref), None)
    if stage is not None and trained_model_key(stage) is not None:
        return trained_model_key(stage)
    return ref if ref in experiment.models else None
