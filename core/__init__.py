"""mentor: teacher-student learning, one plugin at a time.

What plugin authors import lives here: ``hookimpl`` to implement hooks, the
base classes of parameter and stage models, the data types, the loss base
class, and (lazily, since they pull in MLflow) the pipeline's types.
"""

from .config.schema import (
    LossSpec,
    ModelKey,
    SelectionSpec,
    StageConfig,
    StageName,
    TrainingStageConfig,
)
from .data.types import DataBundle, DataInfo, DataNotFound, ImageSet
from .hookspecs import hookimpl
from .losses import Loss, Outputs
from .registry import NoParams, Params

__version__ = "0.1.0"

_LAZY = {"TrainTask": "engine.loop", "StageContext": "pipeline", "StageResult": "pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mentor' has no attribute '{name}'")


__all__ = [
    "DataBundle",
    "DataInfo",
    "DataNotFound",
    "ImageSet",
    "Loss",
    "LossSpec",
    "ModelKey",
    "NoParams",
    "Outputs",
    "Params",
    "SelectionSpec",
    "StageConfig",
    "StageContext",
    "StageName",
    "StageResult",
    "TrainTask",
    "TrainingStageConfig",
    "__version__",
    "hookimpl",
]
