"""Checks a run makes of an experiment against its data before anything trains (``mentor validate --data``
makes them too): each model's class order and each stage's and loss's targets, located in the file."""

from __future__ import annotations

from .config.errors import located_error
from .modality import IMAGE, modality_of
from .model_input import PipelineError, resolve_input
from .registry import UnknownComponent


def check_modality(experiment, registry, bundle) -> None:
    """The data's modality is registered, the source's examples are what it holds, and every augmentation
    the file asks for means something for it: located at ``data.source`` or the ``augment`` block."""
    info = bundle.info
    try:
        modality = modality_of(registry, info)
    except UnknownComponent as exc:
        raise located_error(experiment, ("data", "source"), f"data source '{experiment.data.source}' gives "
                            f"examples of modality '{info.modality}', which no installed plugin registers "
                            f"(known: {', '.join(sorted(exc.known)) or 'none'})") from None
    for split, data in (("train", bundle.train), ("test", bundle.test)):
        problem = modality.check(data.images, info)
        if problem:
            raise located_error(experiment, ("data", "source"),
                                f"data source '{experiment.data.source}', its {split} set: {problem}")
    places = [(("data", "augment"), experiment.data.augment)] + [
        (("stages", i, "augment"), stage.augment) for i, stage in enumerate(experiment.stages)
        if getattr(stage, "augment", None) is not None]
    for path, cfg in places:
        try:
            modality.augmenter(cfg, info)
        except ValueError as exc:
            raise located_error(experiment, path, f"{info.modality} data: {exc}") from None
    if info.modality != IMAGE:
        for key, spec in experiment.models.items():
            stated = spec.preprocess.fields() if spec.preprocess is not None else {}
            if set(stated) - {"classes"}:
                raise located_error(experiment, ("models", key, "preprocess"),
                                    f"{', '.join(sorted(set(stated) - {'classes'}))}: image settings, and the "
                                    f"data is {info.modality}; only classes applies")


def check_inputs(experiment, registry, info) -> None:
    """Each model's own pipeline fits the data (``preprocess.classes`` names every data class): located."""
    for key, spec in experiment.models.items():
        if spec.preprocess is None or spec.preprocess.classes is None:
            continue  # nothing to check against the data, and a uri's record is read when it is built
        try:
            resolve_input(experiment, key, registry, info).class_index(info)
        except PipelineError as exc:
            raise located_error(experiment, ("models", key, "preprocess"), str(exc)) from None


def check_targets(experiment, registry, info) -> None:
    """Each stage's method, and each loss it names, takes the data's targets (one class per example or
    per token): located at the stage's kind or the loss's name, before anything trains."""
    what = {"example": "one class per example", "token": "one class per token"}
    for index, stage in enumerate(experiment.stages):
        method = registry.get("method", stage.kind)
        if info.targets not in method.targets:
            raise located_error(experiment, ("stages", index, "kind"), f"stage kind '{stage.kind}' "
                                f"takes {' or '.join(what[t] for t in sorted(method.targets))}; data source "
                                f"'{experiment.data.source}' gives {what[info.targets]}")
        for i, spec in enumerate(getattr(stage, "losses", None) or ()):
            factory = registry.get("loss", spec.name).factory
            takes = getattr(factory, "targets", frozenset({"example"}))
            if info.targets not in takes:
                raise located_error(experiment, ("stages", index, "losses", i, "name"),
                                    f"loss '{spec.name}' takes {' or '.join(what[t] for t in sorted(takes))}; "
                                    f"data source '{experiment.data.source}' gives {what[info.targets]}")
