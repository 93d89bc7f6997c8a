"""mentor: teacher-student learning, one plugin at a time.

This module is the public API: what a plugin (built-in or third-party)
imports, and the only thing it imports from mentor. Every name in
``__all__`` is documented in docs/plugins.md and versioned: within a 0.x
minor version a name is neither removed nor changed incompatibly; a removal
is announced one minor version ahead. Everything under ``mentor.<module>``
is private and may change at any time.

Names are imported when first used (PEP 562), so that `mentor --help` and a
plugin that needs one name do not pay for torch and MLflow up front.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

# name -> (module, attribute in it; None: the module itself)
_WHERE: dict[str, tuple[str, str | None]] = {
    'teacher_model_key': ('.config.loader', 'teacher_model_key'),
    'trained_model_key': ('.config.loader', 'trained_model_key'),
    'AugmentConfig': ('.config.schema', 'AugmentConfig'),
    'CallbackSpec': ('.config.schema', 'CallbackSpec'),
    'LossSpec': ('.config.schema', 'LossSpec'),
    'ModelKey': ('.config.schema', 'ModelKey'),
    'OptimizerConfig': ('.config.schema', 'OptimizerConfig'),
    'ScheduleConfig': ('.config.schema', 'ScheduleConfig'),
    'SelectionSpec': ('.config.schema', 'SelectionSpec'),
    'StageConfig': ('.config.schema', 'StageConfig'),
    'StageName': ('.config.schema', 'StageName'),
    'TeacherCacheConfig': ('.config.schema', 'TeacherCacheConfig'),
    'TeacherCacheOption': ('.config.schema', 'TeacherCacheOption'),
    'TeacherRef': ('.config.schema', 'TeacherRef'),
    'TrainingConfig': ('.config.schema', 'TrainingConfig'),
    'TrainingStageConfig': ('.config.schema', 'TrainingStageConfig'),
    'WeightSchedule': ('.config.schema', 'WeightSchedule'),
    'RunState': ('.context', 'RunState'),
    'StageContext': ('.context', 'StageContext'),
    'StageResult': ('.context', 'StageResult'),
    'StopRun': ('.context_recording', 'StopRun'),
    'BatchAugment': ('.data.augment', 'BatchAugment'),
    'AugmentDraw': ('.data.augment', 'AugmentDraw'),
    'Batches': ('.data.loader', 'Batches'),
    'IMAGE_EXTENSIONS': ('.data.pool', 'IMAGE_EXTENSIONS'),
    'ImagePool': ('.data.pool', 'ImagePool'),
    'PoolImages': ('.data.pool', 'PoolImages'),
    'find_images': ('.data.pool', 'find_images'),
    'UnlabeledImages': ('.data.splits', 'UnlabeledImages'),
    'derive_seed': ('.data.splits', 'derive_seed'),
    'MAX_MAGNITUDE': ('.data.strong_augment', 'MAX_MAGNITUDE'),
    'StrongAugment': ('.data.strong_augment', 'StrongAugment'),
    'DataBundle': ('.data.types', 'DataBundle'),
    'DataInfo': ('.data.types', 'DataInfo'),
    'DataNotFound': ('.data.types', 'DataNotFound'),
    'ImageSet': ('.data.types', 'ImageSet'),
    'ExampleSet': ('.data.types', 'ExampleSet'),
    'normalise': ('.data.loader', 'normalise'),
    'Modality': ('.modality', 'Modality'),
    'ImageModality': ('.modality', 'ImageModality'),
    'PredictBatch': ('.deploy.predict_inputs', 'PredictBatch'),
    'RecordedViews': ('.data.views', 'RecordedViews'),
    'distributed': ('.engine.distributed', None),
    'CheckpointError': ('.engine.checkpoint', 'CheckpointError'),
    'TrainTask': ('.engine.loop', 'TrainTask'),
    'StepInfo': ('.engine.loop', 'StepInfo'),
    'Step': ('.engine.loop', 'Step'),
    'Batch': ('.engine.loop', 'Batch'),
    'build_optimizer': ('.engine.optim', 'build_optimizer'),
    'build_scheduler': ('.engine.optim', 'build_scheduler'),
    'lr_factor': ('.engine.optim', 'lr_factor'),
    'Runtime': ('.engine.runtime', 'Runtime'),
    'autocast': ('.engine.runtime', 'autocast'),
    'FeatureError': ('.features', 'FeatureError'),
    'FeatureTap': ('.features', 'FeatureTap'),
    'probe': ('.features', 'probe'),
    'hookimpl': ('.hookspecs', 'hookimpl'),
    'INDEX': ('.losses', 'INDEX'),
    'EXAMPLE': ('.losses', 'EXAMPLE'),
    'TOKEN': ('.losses', 'TOKEN'),
    'IGNORE_INDEX': ('.losses', 'IGNORE_INDEX'),
    'flatten_positions': ('.losses', 'flatten_positions'),
    'LABELS': ('.losses', 'LABELS'),
    'STUDENT_LOGITS': ('.losses', 'STUDENT_LOGITS'),
    'TEACHER_LOGITS': ('.losses', 'TEACHER_LOGITS'),
    'Loss': ('.losses', 'Loss'),
    'Outputs': ('.losses', 'Outputs'),
    'ModelBatches': ('.model_input', 'ModelBatches'),
    'ModelInput': ('.model_input', 'ModelInput'),
    'PipelineError': ('.model_input', 'PipelineError'),
    'WithInput': ('.model_input', 'WithInput'),
    'FilePath': ('.params', 'FilePath'),
    'NoParams': ('.params', 'NoParams'),
    'Params': ('.params', 'Params'),
    'pool_diagnostics': ('.pseudo_labels', 'pool_diagnostics'),
    'soft_targets': ('.pseudo_labels', 'soft_targets'),
    'unknown_name_message': ('.registry', 'unknown_name_message'),
    'summary_name': ('.summary', 'summary_name'),
    'SCORES_SCHEMA': ('.tables', 'SCORES_SCHEMA'),
    'SELECTION_SCHEMA': ('.tables', 'SELECTION_SCHEMA'),
    'TableError': ('.tables', 'TableError'),
    'check_selection': ('.tables', 'check_selection'),
    'scores_frame': ('.tables', 'scores_frame'),
    'TeacherCache': ('.teacher_cache', 'TeacherCache'),
    'TeacherCacheError': ('.teacher_cache', 'TeacherCacheError'),
    'mark_untrained': ('.weights', 'mark_untrained'),
    'untrained_layers': ('.weights', 'untrained_layers'),
}

__all__ = [
    # plugins
    "hookimpl",
    "Params",
    "NoParams",
    "FilePath",
    "unknown_name_message",
    "summary_name",
    # experiment-file types a stage config uses
    "StageConfig",
    "TrainingStageConfig",
    "TrainingConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "AugmentConfig",
    "LossSpec",
    "WeightSchedule",
    "SelectionSpec",
    "CallbackSpec",
    "ModelKey",
    "StageName",
    "TeacherRef",
    "TeacherCacheConfig",
    "TeacherCacheOption",
    "trained_model_key",
    "teacher_model_key",
    # data
    "DataBundle",
    "DataInfo",
    "DataNotFound",
    "ImageSet",
    "ExampleSet",
    "Modality",
    "ImageModality",
    "PredictBatch",
    "normalise",
    "ModelBatches",
    "ModelInput",
    "PipelineError",
    "WithInput",
    "UnlabeledImages",
    "ImagePool",
    "PoolImages",
    "IMAGE_EXTENSIONS",
    "find_images",
    "Batches",
    "BatchAugment",
    "AugmentDraw",
    "StrongAugment",
    "MAX_MAGNITUDE",
    "derive_seed",
    "RecordedViews",
    # weights
    "CheckpointError",
    "mark_untrained",
    "untrained_layers",
    # losses and features
    "Loss",
    "Outputs",
    "STUDENT_LOGITS",
    "TEACHER_LOGITS",
    "LABELS",
    "INDEX",
    "EXAMPLE",
    "TOKEN",
    "IGNORE_INDEX",
    "flatten_positions",
    "FeatureTap",
    "FeatureError",
    "probe",
    # running a stage
    "StageContext",
    "RunState",
    "StageResult",
    "StopRun",
    "TrainTask",
    "StepInfo",
    "Step",
    "Batch",
    "Runtime",
    "autocast",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "TeacherCache",
    "TeacherCacheError",
    "distributed",
    # pseudo-label tables
    "SCORES_SCHEMA",
    "SELECTION_SCHEMA",
    "TableError",
    "check_selection",
    "scores_frame",
    "soft_targets",
    "pool_diagnostics",
    "__version__",
]



def __getattr__(name: str):
    try:
        module, attribute = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'mentor' has no attribute {name!r}") from None
    value = importlib.import_module(module, __name__)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # for type checkers and editors: the names as plain imports

    from .config.loader import teacher_model_key, trained_model_key
    from .config.schema import (
        AugmentConfig,
        CallbackSpec,
        LossSpec,
        ModelKey,
        OptimizerConfig,
        ScheduleConfig,
        SelectionSpec,
        StageConfig,
        StageName,
        TeacherCacheConfig,
        TeacherCacheOption,
        TeacherRef,
        TrainingConfig,
        TrainingStageConfig,
        WeightSchedule,
    )
    from .context import RunState, StageContext, StageResult
    from .context_recording import StopRun
    from .data.augment import AugmentDraw, BatchAugment
    from .data.loader import Batches, normalise
    from .data.pool import IMAGE_EXTENSIONS, ImagePool, PoolImages, find_images
    from .data.splits import UnlabeledImages, derive_seed
    from .data.strong_augment import MAX_MAGNITUDE, StrongAugment
    from .data.types import DataBundle, DataInfo, DataNotFound, ExampleSet, ImageSet
    from .data.views import RecordedViews
    from .deploy.predict_inputs import PredictBatch
    from .engine import distributed
    from .engine.checkpoint import CheckpointError
    from .engine.loop import Batch, Step, StepInfo, TrainTask
    from .engine.optim import build_optimizer, build_scheduler, lr_factor
    from .engine.runtime import Runtime, autocast
    from .features import FeatureError, FeatureTap, probe
    from .hookspecs import hookimpl
    from .losses import (
        EXAMPLE,
        IGNORE_INDEX,
        INDEX,
        LABELS,
        STUDENT_LOGITS,
        TEACHER_LOGITS,
        TOKEN,
        Loss,
        Outputs,
        flatten_positions,
    )
    from .modality import ImageModality, Modality
    from .model_input import ModelBatches, ModelInput, PipelineError, WithInput
    from .params import FilePath, NoParams, Params
    from .pseudo_labels import pool_diagnostics, soft_targets
    from .registry import unknown_name_message
    from .summary import summary_name
    from .tables import SCORES_SCHEMA, SELECTION_SCHEMA, TableError, check_selection, scores_frame
    from .teacher_cache import TeacherCache, TeacherCacheError
    from .weights import mark_untrained, untrained_layers
