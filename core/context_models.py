"""Building a stage's models, losses and selections: ``StageContext``'s building part (a mixin).

It needs the context's ``experiment``, ``registry``, ``info``, ``seed``,
``results``, ``stage``, ``index``, ``run_id``, ``tracker``, and its
``config_error`` and ``example``. Every model is built with its own input
pipeline (``mentor.model_input``) and checked before it teaches.
"""

from __future__ import annotations

import sys

import polars as pl
import torch
from torch import nn

from .config.schema import LossSpec, SelectionSpec
from .engine import checkpoint
from .losses import Loss
from .model_input import ModelInput, PipelineError, bare, resolve_input, with_input
from .tables import check_selection
from .weights import untrained_layers


class ModelBuilding:
    """``build_model``, ``model_input``, ``trained_model``, ``teacher``, ``build_loss`` and ``build_selection``
    of ``StageContext``."""

    def build_model(self, key: str, init: str | None = None) -> nn.Module:
        """A fresh ``models[key]``, seeded, with the entry's weights (``checkpoint``, ``uri``, ``weights``);
        then stage ``init``'s weights if given. Weights that cannot be had or do not fit raise a
        ``CheckpointError`` naming ``models.<key>``."""
        spec = self.experiment.models[key]
        torch.manual_seed(self.seed)
        loaded = None
        if spec.uri is not None:
            from .tracking.models import ModelNotFound, load_logged_model

            try:
                loaded = load_logged_model(spec.uri, self.experiment.tracking.uri)
            except ModelNotFound as exc:
                raise checkpoint.CheckpointError(f"models.{key}.uri: {exc}") from None
            if not isinstance(loaded, nn.Module):
                raise checkpoint.CheckpointError(
                    f"models.{key}.uri: {spec.uri} holds a {type(loaded).__name__}, not a torch module")
        pipeline = self.model_input(key)
        if spec.name is None:
            model = loaded
        else:
            component = self.registry.get("model", spec.name)
            try:
                model = component.make_model(
                    pipeline.num_classes(self.info), pipeline.channels, pipeline.size, **spec.params)
            except checkpoint.CheckpointError as exc:  # pretrained weights that cannot be had
                raise checkpoint.CheckpointError(f"models.{key}.weights: {exc}") from None
            if loaded is not None:
                checkpoint.load_weights(model, loaded.state_dict(), f"models.{key}.uri ({spec.uri})")
        if spec.checkpoint:
            checkpoint.load_weights(model, checkpoint.load(spec.checkpoint), f"models.{key}.checkpoint",
                                    key=spec.checkpoint_key)
        if init:
            result = self.results[init]
            checkpoint.load_weights(model, checkpoint.load(result.weights), f"weights of stage '{init}'")
        try:
            wrapped = with_input(model, pipeline, self.info)
        except PipelineError as exc:
            raise self.config_error(("models", key, "preprocess"), str(exc)) from None
        self._record_input(key, pipeline)
        return wrapped

    def _record_input(self, key: str, pipeline: ModelInput) -> None:
        """Each model's pipeline on the stage's run (``preprocess.<key>.*`` params), and said once when it is
        not the data's."""
        if key in self._recorded_inputs or not self.run_id:
            return
        self._recorded_inputs.add(key)
        self.tracker.log_params(self.run_id, pipeline.params(key))
        if not pipeline.is_data_form(self.info):
            print(f"[{self.stage.name}] models.{key} takes its own input: {pipeline.describe()}", file=sys.stderr)

    def model_input(self, key: str) -> ModelInput:
        """``models[key]``'s own input pipeline (``mentor.ModelInput``): the file's ``preprocess``, else its
        weights' transforms, else the pipeline recorded with its ``uri`` model, else the data's."""
        if key not in self._inputs:
            self._inputs[key] = resolve_input(self.experiment, key, self.registry, self.info)
        return self._inputs[key]

    def trained_model(self, stage_name: str) -> nn.Module:
        """The model that an earlier stage trained, with its final weights."""
        result = self.results[stage_name]
        if result.model_key is None or result.weights is None:
            raise ValueError(f"stage '{stage_name}' did not train a model")
        return self.build_model(result.model_key, init=stage_name)

    def teacher(self, ref: str, field: str = "teacher") -> nn.Module:
        """The model a ``TeacherRef`` names, in eval mode on this stage's device: an earlier stage's trained
        model, or a ``models:`` entry with its weights.

        A model entry is checked first, so that a teacher that cannot teach fails
        before anything trains: fresh layers on top of its weights (a new
        classifier head) and an output width other than the data's class count
        are errors located at the stage's ``field``.
        """
        if ref in self.results and self.results[ref].weights is not None:
            model = self.trained_model(ref)
        else:
            model = self.build_model(ref)
            where = ("stages", self.index, field)
            fresh = untrained_layers(bare(model))
            if fresh:
                layer, reason = next(iter(fresh.items()))
                raise self.config_error(where, f"models.{ref}: its layer '{layer}' is freshly initialised "
                                        f"({reason}); a teacher is used without training: train it in a stage "
                                        "first (init from these weights) and name that stage")
            model.eval()
            with torch.no_grad():
                try:
                    outputs = model(self.example())
                except PipelineError as exc:
                    raise self.config_error(("models", ref, "preprocess"), str(exc)) from None
            width = outputs.shape[-1] if outputs.ndim == 2 else None
            if width != self.info.num_classes:
                shape = f"{width} classes" if width is not None else f"shape {tuple(outputs.shape)}"
                raise self.config_error(where, f"models.{ref} outputs {shape} but {self.experiment.data.source} "
                                        f"has {self.info.num_classes}")
        return model.to(self.device).eval()

    def build_loss(self, spec: LossSpec) -> Loss:
        return self.registry.get("loss", spec.name).factory(**spec.params)

    def build_selection(self, spec: SelectionSpec):
        """The selection strategy ``spec`` names, wrapped so that its output is held to the contract."""
        strategy = self.registry.get("selection", spec.name).factory(**spec.params)

        def select(scores: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
            return check_selection(strategy(scores))

        return select
