"""A stage kind: supervised training with mixup (Zhang et al., ICLR 2018)."""

import torch
import torch.nn.functional as F
from pydantic import Field

import mentor
from mentor import hookimpl


class MixupStage(mentor.TrainingStageConfig):
    """Train a model on convex combinations of labeled image pairs and of their labels."""

    model: mentor.ModelKey = Field(description="a key of `models`")
    alpha: float = Field(default=0.2, gt=0, description="the mixing weight is drawn from Beta(alpha, alpha)")


def run_mixup(stage: MixupStage, ctx: mentor.StageContext) -> mentor.StageResult:
    model = ctx.build_model(stage.model)
    beta = torch.distributions.Beta(stage.alpha, stage.alpha)

    def step(x: torch.Tensor, y: torch.Tensor):
        lam = beta.sample().to(x.device)  # the global generator, seeded and resumed by mentor
        order = torch.randperm(len(x), device=x.device)
        logits = model(lam * x + (1 - lam) * x[order]).float()
        loss = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[order])
        return loss, {"lambda": lam}

    task = mentor.TrainTask(model=model, step=step, data=ctx.training_data())
    return ctx.fit(task, stage.model)  # the one loop: evaluation, checkpoints, resume, MLflow


@hookimpl
def register_methods(register):
    register("mixup", run_mixup, params=MixupStage, description="supervised training with mixup")
