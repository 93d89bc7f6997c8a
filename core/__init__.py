"""mentor: teacher-student learning, one plugin at a time.

This module is the public API: what a plugin (built-in or third-party)
imports, and the only thing it imports from mentor. Every name in
``__all__`` is documented in docs/plugins.md and versioned: within a 0.x
minor version a name is neither removed nor changed incompatibly; a removal
is announced one minor version ahead. Everything under ``mentor.<module>``
is private and may change at any time.
"""

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
from .data.augment import BatchAugment
from .data.loader import Batches
from .data.pool import IMAGE_EXTENSIONS, ImagePool, PoolImages, find_images
from .data.splits import UnlabeledImages, derive_seed
from .data.strong_augment import MAX_MAGNITUDE, StrongAugment
from .data.types import DataBundle, DataInfo, DataNotFound, ImageSet
from .data.views import RecordedViews
from .engine import distributed
from .engine.checkpoint import CheckpointError
from .engine.loop import TrainTask
from .engine.optim import build_optimizer, build_scheduler, lr_factor
from .engine.runtime import Runtime, autocast
from .features import FeatureError, FeatureTap, probe
from .hookspecs import hookimpl
from .losses import INDEX, LABELS, STUDENT_LOGITS, TEACHER_LOGITS, Loss, Outputs
from .model_input import ModelBatches, ModelInput, PipelineError, WithInput
from .params import FilePath, NoParams, Params
from .pseudo_labels import pool_diagnostics, soft_targets
from .registry import unknown_name_message
from .summary import summary_name
from .tables import SCORES_SCHEMA, SELECTION_SCHEMA, TableError, check_selection, scores_frame
from .teacher_cache import TeacherCache, TeacherCacheError
from .version import __version__
from .weights import mark_untrained, untrained_layers

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
    "FeatureTap",
    "FeatureError",
    "probe",
    # running a stage
    "StageContext",
    "RunState",
    "StageResult",
    "StopRun",
    "TrainTask",
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
