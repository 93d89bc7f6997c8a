"""The ``evaluate`` stage kind: score a model on val and test, train nothing.

Why: a teacher that comes from outside (a checkpoint, an MLflow model, torchvision
weights) should be measured on the same splits and in the same terms as the
students it teaches, so that ``mentor compare`` lists it beside them. The stage
logs what a training stage logs at its end (``val/...``, ``test/...`` and their
``best.*`` and ``last.*`` summaries, which are the same numbers here), the
confusion matrix on test, and the model's size.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from mentor import StageConfig, StageContext, StageResult, TeacherRef, hookimpl, summary_name, teacher_model_key

SUMMARY_KEYS = ("val/accuracy", "val/loss", "test/accuracy", "test/loss")


class EvaluateStage(StageConfig):
    """Scores one trained model on the val and test splits, un-augmented, in eval mode."""

    model: TeacherRef = Field(description="the model to score: an earlier stage (its trained model) or a "
                              "`models` key with weights")
    eval_batch_size: int = Field(default=1024, ge=1, description="images per evaluation batch")


def model_size(model: nn.Module) -> dict[str, float]:
    """Parameter count and the size of the fp32 state_dict in MB (10^6 bytes; buffers included)."""
    parameters = sum(p.numel() for p in model.parameters())
    size = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    size += sum(t.numel() * t.element_size() for t in model.state_dict().values() if not t.is_floating_point())
    return {"model/parameters": float(parameters), "model/size_mb": size / 1e6}


def near_chance(accuracy: float, classes: int) -> bool:
    """Within a tenth of the way from chance (1 / classes) to perfect: 0.55 of 2 classes, 0.19 of 10."""
    chance = 1.0 / classes
    return accuracy < chance + 0.1 * (1.0 - chance)


def run_evaluate(stage: EvaluateStage, ctx: StageContext) -> StageResult:
    model = ctx.teacher(stage.model, "model")
    metrics = ctx.evaluate(model, stage.eval_batch_size)
    split = "val" if "val/accuracy" in metrics else "test"
    accuracy = metrics.get(f"{split}/accuracy")
    if accuracy is not None and near_chance(accuracy, ctx.info.num_classes):
        earlier = ctx.results.get(stage.model)
        key = earlier.model_key if earlier is not None and earlier.model_key else stage.model
        pipeline = ctx.model_input(key)
        ctx.warn(f"{stage.model} scores {accuracy:.4f} on {split}, near chance ({1 / ctx.info.num_classes:.4f} for "
                 f"{ctx.info.num_classes} classes). First suspect: its preprocessing. It is fed "
                 f"{pipeline.describe()}; a model trained with other statistics (ImageNet's) or another size "
                 f"scores like this: state what it was trained with in models.{key}.preprocess (image_size, "
                 "channels, mean, std). Then: its class order (preprocess.classes: the class of each output, in "
                 "its order) and its checkpoint. docs/own_teacher.md")
    summary = {summary_name(when, k): metrics[k] for when in ("best", "last") for k in SUMMARY_KEYS if k in metrics}
    ctx.log_metrics({**metrics, **model_size(model)}, step=0)
    ctx.log_metrics(summary, step=0)
    ctx.log_confusion_matrix(model)
    earlier = ctx.results.get(stage.model)
    weights = earlier.weights if earlier is not None else None  # an earlier stage's, or the entry's own
    key = teacher_model_key(ctx.experiment, stage.model)
    if earlier is None or earlier.weights is None:  # a models entry used as it is: predictable like a trained one
        ctx.log_model(model, key)
    return StageResult(stage.name, stage.kind, model_key=key,
                       weights=weights, metrics={**summary, **model_size(model)})


@hookimpl
def register_methods(register):
    register("evaluate", run_evaluate, params=EvaluateStage, targets=("example", "token"),
             description="score a model (a stage's or a `models` entry with weights) on val and test; no training")
