"""The hooks a mentor plugin can implement: one documented spec per hook.

Two families:

* Registration hooks (``register_*``) are called once when plugins load. Each
  receives a ``register`` callback::

      register(name, factory, params=ParamsModel, description="one line")

  ``params`` is a pydantic model that validates the ``params:`` block an
  experiment file gives for that component; the validated values reach the
  factory as keyword arguments. A name registered twice, by any two plugins,
  is an error that names both.

* Lifecycle hooks (``on_*``) observe a run without touching its loop: extra
  loggers, early stopping, notifications. They receive the live objects and
  return nothing. Raising from one aborts the run like any other error (the
  run is checkpointed each epoch and can be resumed).
"""

from __future__ import annotations

import pluggy

PROJECT = "mentor"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration -----------------------------------------------------------


@hookspec
def register_models(register):
    """Register model architectures.

    ``factory(num_classes: int, in_channels: int, **params) -> torch.nn.Module``
    builds a classifier whose ``forward`` returns logits. Models must adapt to
    the data's channels and number of classes. A factory that declares an
    ``image_size`` keyword also gets the input's ``(height, width)`` (unless
    the experiment file sets it in ``params``), for layers sized by it.
    """


@hookspec
def register_losses(register):
    """Register loss terms for training and distillation stages.

    ``factory(**params) -> mentor.Loss``. A loss declares what it needs
    (``Loss.needs``: student/teacher logits, labels; ``student_nodes`` /
    ``teacher_nodes``: intermediate outputs by node name) so that a stage
    computes only those. A loss may own parameters (a hint regressor); they
    are built from probed feature shapes in ``Loss.build`` and trained with
    the student, but are not part of the exported student.
    """


@hookspec
def register_data_sources(register):
    """Register labeled datasets.

    ``factory(**params) -> mentor.DataBundle``: the train and test sets as
    ``mentor.ImageSet`` (``mentor.ExampleSet``) plus ``mentor.DataInfo``
    (classes, channels, size, mean/std, and the examples' ``modality``:
    images unless it names another registered one). The core derives the validation, labeled and unlabeled splits
    from the train set, so a source only says what is on disk. A source that
    cannot find its files raises ``mentor.DataNotFound`` saying how to get them.
    """


@hookspec
def register_unlabeled_sources(register):
    """Register unlabeled image pools (``data.unlabeled: {source, params}``).

    ``factory(**params) -> mentor.ImagePool``: image files on disk, decoded on
    demand, so a pool may be larger than memory. Without ``data.unlabeled`` the
    unlabeled split is the remainder of the labeled source. A source that finds
    no files (a missing folder, an empty pool) raises ``mentor.DataNotFound``
    naming the path.
    """


@hookspec
def register_selection_strategies(register):
    """Register pseudo-label selection strategies.

    ``factory(**params) -> Callable[[polars.DataFrame], polars.DataFrame]``:
    a table of scored unlabeled samples in, the selected rows out.
    """


@hookspec
def register_methods(register):
    """Register stage kinds (the ``kind:`` of a stage in an experiment file).

    ``factory`` is the runner: ``runner(stage, ctx: mentor.StageContext) ->
    mentor.StageResult``. ``params`` is the stage's config model, a subclass of
    ``mentor.StageConfig``; the core adds the ``kind`` field. A runner usually
    builds a ``mentor.TrainTask`` and hands it to ``ctx.fit``, the one training
    loop shared by every method.
    """


@hookspec
def register_callbacks(register):
    """Register callbacks: lifecycle-hook plugins an experiment file turns on by name.

    ``factory(**params) -> object`` whose methods are ``@mentor.hookimpl``
    implementations of the lifecycle hooks below. An experiment's
    ``callbacks: [{name, params}]`` builds one object per entry for the run
    and registers it for the run's duration. A callback ends the current
    training loop early with ``ctx.stop_stage(reason)`` (the stage then
    finishes normally), or the whole run by raising ``mentor.StopRun``.
    """


@hookspec
def register_modalities(register):
    """Register modalities: kinds of example (images, feature vectors, audio clips) a data source may give.

    ``factory() -> mentor.Modality``: an object that says what the modality's
    examples are (``check``), how training batches are augmented (``augmenter``:
    a *draw* of random parameters and an *apply*, so the teacher cache can
    rebuild a recorded view), the ONNX input's name (``input_name``) and what
    ``mentor predict`` reads (``predict_batches``). A data source names its
    modality in ``DataInfo.modality``; ``image`` is built in. Normalisation is
    the core's: ``(x - mean) / std`` per entry of dimension 1, after ``x / 255``
    for uint8 pixels.
    """


# --- lifecycle ----------------------------------------------------------------


@hookspec
def on_experiment_start(experiment, run_id):
    """An experiment run starts (or resumes). ``experiment`` is the validated config."""


@hookspec
def on_experiment_end(experiment, run_id, results, status):
    """An experiment run ends; ``status`` is FINISHED, FAILED or KILLED and
    ``results`` maps stage names to ``StageResult`` for the stages that finished."""


@hookspec
def on_stage_start(stage, ctx):
    """A stage starts (or resumes); ``ctx`` is its ``StageContext``."""


@hookspec
def on_stage_end(stage, ctx, result):
    """A stage finished; ``result`` is its ``StageResult``."""


@hookspec
def on_epoch_end(stage, ctx, epoch, metrics):
    """An epoch of a training loop ended and its checkpoint is on disk.

    ``metrics`` maps names such as ``train/loss`` and ``val/accuracy`` to floats.
    """
