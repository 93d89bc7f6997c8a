"""Experiment files: schema, reading, validation with located errors."""

from .errors import ConfigError, Problem
from .loader import load_experiment, validate_document
from .schema import (
    AugmentConfig,
    DataConfig,
    LossSpec,
    ModelKey,
    ModelSpec,
    OptimizerConfig,
    ScheduleConfig,
    SelectionSpec,
    StageConfig,
    StageName,
    TrainingStageConfig,
    UnlabeledSpec,
)

__all__ = [
    "AugmentConfig", "ConfigError", "DataConfig", "LossSpec", "ModelKey", "ModelSpec",
    "OptimizerConfig", "Problem", "ScheduleConfig", "SelectionSpec", "UnlabeledSpec", "StageConfig", "StageName",
    "TrainingStageConfig", "load_experiment", "validate_document",
]
