"""The experiment file's shape, as pydantic models.

The fixed part lives here. The parts that plugins extend (stage kinds and
every component's ``params``) are resolved against the loaded plugins in
``loader.py``: stage kinds become a discriminated union built at load time,
and each ``params`` block is validated by its component's own model.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from ..params import Params
from .component_schema import ComponentSpec
from .data_schema import AugmentConfig, DataConfig, RandAugmentConfig, UnlabeledSpec  # noqa: F401 (re-exported)
from .preprocess_schema import PreprocessSpec
from .search import SearchConfig
from .shipping_schema import ExportConfig, ReportConfig  # noqa: F401 (kept in modules of their own)
from .teacher_cache_schema import TeacherCacheConfig, TeacherCacheOption, exact_cache  # noqa: F401

# --- names that become folder names ---------------------------------------------

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_RULE = "letters, digits, _ . - only, starting with a letter or digit, at most 100 characters"


def check_name(value: str) -> str:
    """The one rule for every name mentor turns into a path (experiment, stage, study): no separators,
    no ``..``, nothing empty, so that what a run writes stays under its folder."""
    if len(value) > 100 or not re.match(NAME_PATTERN, value):
        shown = repr(value) if len(value) <= 60 else f"{value[:40]!r}... ({len(value)} characters)"
        raise ValueError(f"{shown} is not a valid name: it names a folder ({NAME_RULE})")
    return value


PathName = Annotated[str, AfterValidator(check_name)]

# --- references between parts of a file -----------------------------------------


@dataclass(frozen=True)
class Ref:
    """Marks a string field as naming another part of the experiment."""

    target: Literal["model", "stage", "teacher"]


ModelKey = Annotated[str, Ref("model")]
"""A key of the experiment's ``models:`` mapping."""

StageName = Annotated[str, Ref("stage")]
"""The name of an earlier stage, standing for the model it trained."""

TeacherRef = Annotated[str, Ref("teacher")]
"""A trained model used as is: an earlier stage's name (the model it trained) or a
``models:`` key that has weights (``checkpoint``, ``uri`` or ``weights``). A name
that is both an earlier stage that trains a model and a model key stands for
the stage (a stage ``teacher`` that trains ``models.teacher`` is the usual case);
a stage that trains nothing (``evaluate``) never stands for a model."""


# --- components chosen by name ------------------------------------------------------


WEIGHT_SOURCES = ("checkpoint", "uri", "weights")


class ModelSpec(ComponentSpec):
    """A model: an architecture by ``name`` (a model component) and, optionally, where its weights come from."""

    name: str | None = Field(
        default=None, description="a registered model (see `mentor plugins`); may be omitted with `uri`")
    kind: ClassVar[str] = "model"
    checkpoint: str | None = Field(
        default=None, description="weights from a .pt file: a state_dict, or a dict holding one under "
        "'state_dict' or 'model' (mentor's final.pt / checkpoint.pt); a relative path is read from the "
        "experiment file's folder (from the working directory when given with --set)")
    checkpoint_key: str | None = Field(
        default=None, description="the entry of the checkpoint that holds the state_dict, for a file saved as "
        "{'epoch': ..., 'model_state_dict': ...} (a DDP `module.`, Lightning `model.` or torch.compile "
        "`_orig_mod.` key prefix is removed without asking)")
    uri: str | None = Field(
        default=None, description="an MLflow model: runs:/<run id>/<artifact path>, models:/<name>/<version> "
        "or models:/<name>@<alias>, read from this experiment's tracking store; without `name` the loaded "
        "module is used as is, with `name` its state_dict is loaded into a fresh `name` model")
    weights: str | None = Field(
        default=None, description="pretrained weights of the model component (e.g. torchvision's DEFAULT or "
        "ResNet18_Weights.IMAGENET1K_V1); the same as params.weights")
    preprocess: PreprocessSpec | None = Field(
        default=None, description="the input pipeline the model was trained with (size, channels, mean, std, "
        "class order), where it is not the data's own: a teacher trained elsewhere (docs/own_teacher.md); "
        "default: its weights' transforms, its recorded pipeline (uri), else the data's")

    @model_validator(mode="after")
    def _one_weight_source(self):
        given = [field for field in WEIGHT_SOURCES if getattr(self, field) is not None]
        if len(given) > 1:
            raise ValueError(f"set only one of checkpoint, uri, weights (got {', '.join(given)})")
        if self.name is None and self.uri is None:
            raise ValueError("a model needs a `name` (or a `uri` whose model is used as is)")
        if self.checkpoint_key is not None and self.checkpoint is None:
            raise ValueError("checkpoint_key names an entry of a checkpoint file: set checkpoint too")
        return self

    @property
    def has_weights(self) -> bool:
        """Whether this model comes with trained weights (so it can teach without a stage training it)."""
        return any(getattr(self, field) is not None for field in WEIGHT_SOURCES) or \
            self.params.get("weights") is not None


class WeightSchedule(Params):
    """A loss weight that moves from ``start`` to ``end`` over the first ``epochs`` epochs, then stays.

    At 0-based epoch e the ramp has gone p = min((e + 1) / epochs, 1) of the
    way: linear start + (end - start) p, or cosine start + (end - start)
    (1 - cos(pi p)) / 2. DKD's warm-up is {start: 0, end: 1, epochs: 20}
    (mdistiller's min(epoch / 20, 1) with 1-based epochs); FitNets' annealed KD
    weight is {start: 4, end: 1, epochs: <the stage's epochs>}.
    """

    start: float = Field(ge=0, allow_inf_nan=False, description="the weight in the first epoch's ramp")
    end: float = Field(ge=0, allow_inf_nan=False, description="the weight from epoch `epochs` on")
    epochs: int = Field(ge=1, description="epochs the ramp takes (at most the stage's epochs)")
    shape: Literal["linear", "cosine"] = Field(default="linear", description="how the weight moves")

    def at(self, epoch: int) -> float:
        p = min((epoch + 1) / self.epochs, 1.0)
        if self.shape == "cosine":
            p = (1 - math.cos(math.pi * p)) / 2
        return self.start + (self.end - self.start) * p

    @property
    def peak(self) -> float:
        return max(self.start, self.end)


class LossSpec(ComponentSpec):
    name: str
    kind: ClassVar[str] = "loss"
    weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] | WeightSchedule = Field(
        default=1.0, description="the term's weight in the total loss: a number, or a schedule "
        "{start, end, epochs, shape: linear|cosine} over the stage's epochs")

    def weight_at(self, epoch: int) -> float:
        """The weight in 0-based epoch ``epoch``."""
        return self.weight.at(epoch) if isinstance(self.weight, WeightSchedule) else self.weight

    @property
    def peak_weight(self) -> float:
        return self.weight.peak if isinstance(self.weight, WeightSchedule) else self.weight


class SelectionSpec(ComponentSpec):
    name: str
    kind: ClassVar[str] = "selection"


class CallbackSpec(ComponentSpec):
    """A lifecycle-hook plugin (``register_callbacks``) with its own validated parameters."""

    name: str
    kind: ClassVar[str] = "callback"


# --- training ------------------------------------------------------------------------


class OptimizerConfig(Params):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0)
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="adamw only")


class ScheduleConfig(Params):
    name: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_epochs: float = Field(default=0, ge=0, description="linear warm-up from 0")
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs")
    gamma: float = Field(default=0.1, gt=0, description="multistep: factor at each milestone")
    min_lr: float = Field(default=0.0, ge=0, description="cosine: final learning rate")


#: the options each optimizer and schedule reads; the others are not logged as a run's parameters
OPTIMIZER_OPTIONS = {"sgd": {"name", "lr", "momentum", "nesterov", "weight_decay"},
                     "adamw": {"name", "lr", "weight_decay", "betas"}}
SCHEDULE_OPTIONS = {"cosine": {"name", "warmup_epochs", "min_lr"},
                    "multistep": {"name", "warmup_epochs", "milestones", "gamma"},
                    "constant": {"name", "warmup_epochs"}}


def applicable(config):
    """A dumped config without the optimizer and schedule options its choices do not read (Adam's betas on
    SGD, milestones on a cosine schedule), so that a run's parameters say what it used."""
    if isinstance(config, list):
        return [applicable(v) for v in config]
    if not isinstance(config, dict):
        return config
    keys = set(config)
    for fields, options in ((OptimizerConfig.model_fields, OPTIMIZER_OPTIONS),
                            (ScheduleConfig.model_fields, SCHEDULE_OPTIONS)):
        if keys == set(fields) and config.get("name") in options:
            return {k: v for k, v in config.items() if k in options[config["name"]]}
    return {k: applicable(v) for k, v in config.items()}


class StageConfig(Params):
    """Fields every stage has. Methods subclass it; the core adds ``kind``."""

    name: PathName | None = Field(default=None, description="defaults to '<kind>' or '<kind>_<i>'")
    seed: int | None = Field(default=None, ge=0, lt=2**63, description="defaults to the experiment's seed")
    export: ExportConfig | None = Field(
        default=None, description="write the stage's kept model as ONNX (and int8), checked by ONNX Runtime, "
        "logged as MLflow models; `export: {}` for the defaults")

    def check(self, experiment, registry) -> list[tuple[tuple, str]]:
        """Extra checks once the whole file is valid: (path within the stage, message) pairs.

        Methods override this for what only they know (a loss's node names exist
        in the model, say), so that ``mentor validate`` catches it before any run.
        """
        return []


class TrainingConfig(Params):
    """How the shared training loop trains: a stage's fields, or a phase's (a fine-tune)."""

    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=128, ge=1)
    eval_batch_size: int = Field(default=1024, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    augment: AugmentConfig | None = Field(default=None, description="defaults to data.augment")
    train_subset: int | None = Field(
        default=None, ge=1, description="train on a class-balanced subset of this many labeled rows"
    )
    select_on: str = Field(
        default="val/accuracy", description="metric that picks the best epoch (names ending in 'loss' are minimised)"
    )
    eval_every: int = Field(
        default=1, ge=1, description="evaluate on val and test every n epochs (and always after the last)"
    )
    keep: Literal["best", "last"] = Field(
        default="best", description="which epoch's weights the stage keeps, logs, exports and hands to later "
        "stages: the best by select_on, or the last")
    max_nonfinite_steps: int = Field(
        default=0, ge=0, description="steps with a NaN or infinite loss allowed per epoch before the stage "
        "fails as diverged (their updates are applied as they are; 0: none allowed)")

    @field_validator("select_on")
    @classmethod
    def _select_on_validation(cls, value: str) -> str:
        split = value.split("/", 1)[0]
        if split == "test":
            raise ValueError(f"{value!r} would pick the epoch by the test set, which then no longer measures "
                             "anything unseen: select on val/... (or train/...)")
        if split not in ("val", "train") or "/" not in value:
            raise ValueError(f"{value!r} is not an epoch metric: use val/accuracy, val/loss or train/<term>")
        return value


class TrainingStageConfig(StageConfig, TrainingConfig):
    """A stage that runs the shared training loop."""


# --- the whole file ------------------------------------------------------------------


class EngineConfig(Params):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    channels_last: bool | None = Field(default=None, description="default: on for CUDA")
    compile: bool = False
    data_placement: Literal["auto", "device", "host"] = Field(
        default="auto", description="device: hold the uint8 data on the GPU (the fast path); host: host memory, "
        "batches cut by DataLoader workers, pinned, copied without blocking; auto: device when a set takes at "
        "most half the GPU's free memory")
    loader_workers: int = Field(default=2, ge=0, description="DataLoader worker processes for data held on the host")
    deterministic: bool = Field(default=True, description="deterministic kernels on CPU")
    keep_host_memory: bool = Field(
        default=True, description="on the CPU, keep freed memory for the next step instead of returning it to the "
        "system (glibc's mallopt): page faults were a tenth of a CPU step; false returns it")
    progress: Literal["auto", "bar", "plain", "none"] = "auto"


class RegisterConfig(Params):
    """Which model goes into the MLflow model registry, under which name."""

    name: str = Field(min_length=1, max_length=250, description="the registered model's name")
    stage: str | None = Field(default=None, description="the stage whose kept model is registered; default: "
                              "the last stage that trains a model")


# the field `register` shadows ABCMeta.register of the class, which nothing here uses
warnings.filterwarnings("ignore", message='Field name "register" in "TrackingConfig" shadows')


class TrackingConfig(Params):
    uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db",
    )
    experiment: str | None = Field(default=None, description="MLflow experiment; default: name")
    checkpoint_dir: str = Field(default="mlruns/checkpoints", description="local resume state")
    cache_dir: str = Field(default="mlruns/cache", description="tables shared by stages, runs and sweep trials "
                           "(a teacher's scores of a pool), keyed by what they were computed from")
    log_model: bool = Field(default=True, description="log the final model as an MLflow model")
    log_every_steps: int = Field(default=10, ge=0, description="log the training loss, its terms and the "
                                 "learning rate every this many steps, as step/* metrics (0: per epoch only)")
    register: RegisterConfig | None = Field(
        default=None, description="register the kept student in the MLflow model registry: a name, or "
        "{name, stage}")

    @field_validator("register", mode="before")
    @classmethod
    def _register_name(cls, value):
        return {"name": value} if isinstance(value, str) else value


class ExperimentBase(Params):
    """The experiment file. ``stages`` is typed by the loader from the plugins."""

    name: PathName
    description: str = ""
    seed: int = Field(default=0, ge=0, lt=2**63, description="every stage's seed unless it sets its own")
    seeds: list[Annotated[int, Field(ge=0, lt=2**63)]] | None = Field(
        default=None, min_length=1, description="run the experiment once per seed under one parent run, which "
        "logs each metric's mean and std; each run's `seed` (and `data.split_seed`, unless the file sets it) is "
        "the seed")
    data: DataConfig
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    stages: list[Any] = Field(min_length=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    search: SearchConfig | None = Field(default=None, description="hyperparameter search (`mentor sweep`)")
    report: ReportConfig | None = Field(default=None, description="the compression report at the end of a run")
    callbacks: list[CallbackSpec] = Field(default_factory=list, description="lifecycle-hook plugins for this run "
                                          "(e.g. early_stopping), see `mentor plugins`")
    # the file it was read from (a config.document.Document), so that errors found at run time are located too
    _document: Any = PrivateAttr(default=None)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds):
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {seeds}; each seed runs once")
        return seeds
