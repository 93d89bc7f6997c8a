"""Feature and decoupled-logit distillation losses: FitNets hints, attention transfer, DKD.

- ``hint``: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets".
- ``attention``: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention".
- ``dkd``: Zhao et al. 2022, "Decoupled Knowledge Distillation".

The reference implementations followed are RepDistiller (HobbitLong/RepDistiller:
``ConvReg``, ``HintLoss``, ``Attention``) and mdistiller (megvii-research/mdistiller:
``dkd_loss``); where this module departs from them, the docstring says so and why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from mentor import LABELS, STUDENT_LOGITS, TEACHER_LOGITS, Loss, Outputs, Params, hookimpl

from .losses import standardize_logits

# ---------------------------------------------------------------------------------------------
# FitNets hint


class HintParams(Params):
    student_node: str = Field(min_length=1, description="student node whose output is regressed (the guided layer)")
    teacher_node: str = Field(min_length=1, description="teacher node whose output is the hint")
    relu: bool = Field(default=True, description="end the conv regressor with ReLU, as RepDistiller does; "
                                                 "turn off when the teacher node is pre-activation (can be < 0)")


class _Resize(nn.Module):
    """Bilinear resize to a fixed spatial size (a module so it sits inside the regressor's Sequential)."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def conv_regressor(s_shape: torch.Size, t_shape: torch.Size, relu: bool = True) -> nn.Sequential:
    """Map a [B,C,H,W] student map onto the teacher's [B,C',H',W'] as RepDistiller's ConvReg does.

    - student twice the teacher's size (both dims): 3x3 conv, stride 2, padding 1;
    - student half the teacher's size (both dims): 4x4 transposed conv, stride 2, padding 1;
    - student at least as large in both dims: one "valid" conv of kernel (1+sH-tH, 1+sW-tW)
      (a 1x1 conv when the sizes are equal);
    - anything else (student smaller, but not exactly half, in some dim): RepDistiller raises
      here. We resize the student map bilinearly to (tH, tW) and then apply a 1x1 conv: the
      resize has no parameters, so all learned capacity stays in the channel mapping, which is
      what the FitNets regressor is for; bilinear keeps the map smooth where nearest would not.

    The conv is followed by BatchNorm2d and (by default) ReLU, like ConvReg. RepDistiller takes
    the teacher's features after the block's ReLU (torchvision ResNet block outputs such as
    "layer2" are post-ReLU too), so a ReLU-ended regressor can match them exactly; a teacher
    node before its activation (e.g. "layer3.0.add") can be negative, use ``relu=False`` then.
    """
    _, s_c, s_h, s_w = s_shape
    _, t_c, t_h, t_w = t_shape
    if s_h == 2 * t_h and s_w == 2 * t_w:
        layers = [nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)]
    elif 2 * s_h == t_h and 2 * s_w == t_w:
        layers = [nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)]
    elif s_h >= t_h and s_w >= t_w:
        layers = [nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))]
    else:
        layers = [_Resize((t_h, t_w)), nn.Conv2d(s_c, t_c, kernel_size=1)]
    layers.append(nn.BatchNorm2d(t_c))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Hint(Loss):
    """FitNets hint (Romero et al. 2015): MSE between regressor(student feature) and teacher feature.

    The regressor is built from the probed shapes in ``build`` and trains with the student.
    FitNets trained the hint in a separate stage before KD; RepDistiller (and the published
    CIFAR-100 recipe: CE + 100 x hint on the second stage's output) adds it to the loss in one
    stage, which is what a weighted loss term here gives.
    """

    needs = frozenset()

    def __init__(self, student_node: str, teacher_node: str, relu: bool = True):
        super().__init__()
        self.student_node, self.teacher_node, self.relu = student_node, teacher_node, relu
        self.student_nodes = (student_node,)
        self.teacher_nodes = (teacher_node,)
        self.regressor: nn.Module | None = None
        self.target_shape: tuple[int, ...] | None = None  # teacher feature shape without the batch dim

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        s_shape = torch.Size(student_shapes[self.student_node])
        t_shape = torch.Size(teacher_shapes[self.teacher_node])
        if len(s_shape) == 4 and len(t_shape) == 4:
            self.regressor = conv_regressor(s_shape, t_shape, relu=self.relu)
        elif len(s_shape) == 2 and len(t_shape) == 2:
            self.regressor = nn.Linear(s_shape[1], t_shape[1])
        else:
            raise ValueError(
                f"hint: student node '{self.student_node}' has shape {tuple(s_shape)} and teacher node "
                f"'{self.teacher_node}' has shape {tuple(t_shape)}; both must be feature maps [B,C,H,W] "
                "or both vectors [B,D]"
            )
        self.target_shape = tuple(t_shape[1:])

    def forward(self, out: Outputs) -> torch.Tensor:
        if self.regressor is None:
            raise RuntimeError(f"hint ({self.student_node} -> {self.teacher_node}): forward called before build(); "
                               "the stage must call build() with the probed feature shapes first")
        student = out.student_features[self.student_node].float()
        teacher = out.teacher_features[self.teacher_node].detach().float()
        guess = self.regressor(student)
        if guess.shape != teacher.shape:  # F.mse_loss would broadcast silently
            raise ValueError(f"hint: regressed student feature {tuple(guess.shape)} does not match teacher feature "
                             f"'{self.teacher_node}' {tuple(teacher.shape)} (probed {self.target_shape})")
        return F.mse_loss(guess, teacher)


# ---------------------------------------------------------------------------------------------
# Attention transfer


class AttentionParams(Params):
    pairs: list[tuple[str, str]] = Field(min_length=1,
                                         description="(student_node, teacher_node) pairs of [B,C,H,W] maps")
    p: float = Field(default=2.0, gt=0, description="exponent of the attention map sum_c |f_c|^p")

    @field_validator("pairs")
    @classmethod
    def _non_empty_names(cls, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for s, t in pairs:
            if not s or not t:
                raise ValueError("node names in pairs must be non-empty")
        return pairs


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """L2-normalised spatial attention of a [B,C,H,W] map: mean over channels of |f|^p, flattened.

    The paper defines the map with absolute values (sum_c |A_c|^p); RepDistiller writes
    f.pow(p), which is the same for even p (the default 2) and NaN for fractional p on negative
    (pre-activation) features, so we take |f|.
    """
    return F.normalize(f.abs().pow(p).mean(1).reshape(f.shape[0], -1), dim=1)


class Attention(Loss):
    """Attention transfer (Zagoruyko & Komodakis 2017): match normalised spatial attention maps.

    loss = sum over pairs of mean((a_s - a_t)^2), the mean over batch and positions, as RepDistiller
    and mdistiller compute it (each pair has the published weight beta, so a recipe's ``weight: 1000``
    is beta = 1000 per pair). When a pair's spatial sizes differ, the larger
    map is adaptively average-pooled to the smaller one before its attention map is taken (as
    RepDistiller does; per dimension here, so a student larger than its teacher is pooled to the
    teacher's (H, W), never upsampled). The published recipe (RepDistiller) weights this term by
    1000 (its beta) next to cross-entropy; set that weight in the experiment file.
    """

    needs = frozenset()

    def __init__(self, pairs: list[tuple[str, str]], p: float = 2.0):
        super().__init__()
        if not pairs:
            raise ValueError("attention: needs at least one (student_node, teacher_node) pair")
        self.pairs = [(str(s), str(t)) for s, t in pairs]
        self.p = p
        self.student_nodes = tuple(dict.fromkeys(s for s, _ in self.pairs))
        self.teacher_nodes = tuple(dict.fromkeys(t for _, t in self.pairs))

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """No parameters; check early that every node is a feature map, so a bad node fails before training."""
        for s, t in self.pairs:
            for role, node, shape in (("student", s, student_shapes[s]), ("teacher", t, teacher_shapes[t])):
                if len(shape) != 4:
                    raise ValueError(f"attention: {role} node '{node}' has shape {tuple(shape)}; "
                                     "attention transfer needs feature maps [B,C,H,W]")

    def forward(self, out: Outputs) -> torch.Tensor:
        total = None
        for s, t in self.pairs:
            f_s = out.student_features[s].float()
            f_t = out.teacher_features[t].detach().float()
            size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
            if tuple(f_s.shape[2:]) != size:
                f_s = F.adaptive_avg_pool2d(f_s, size)
            if tuple(f_t.shape[2:]) != size:
                f_t = F.adaptive_avg_pool2d(f_t, size)
            term = (attention_map(f_s, self.p) - attention_map(f_t, self.p)).pow(2).mean()
            total = term if total is None else total + term
        return total


# ---------------------------------------------------------------------------------------------
# Decoupled KD


class DKDParams(Params):
    alpha: float = Field(default=1.0, ge=0, description="weight of TCKD (target vs non-target)")
    beta: float = Field(default=8.0, ge=0, description="weight of NCKD (among non-target classes)")
    temperature: float = Field(default=4.0, gt=0, description="softening temperature T")
    warmup_epochs: int = Field(default=20, ge=0, description="linear ramp of the whole term over this many epochs")
    standardize: bool = Field(default=False, description="logit standardization (Sun et al. 2024) of teacher and "
                              "student logits before DKD")


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TCKD and NCKD of Zhao et al. 2022, each times T^2, summed over classes and averaged over the batch.

    TCKD = KL(b_t || b_s) on the binary distributions b = (p_target, 1 - p_target) of the softened
    softmax. mdistiller sums probabilities and takes their log; we compute the same log-probs with
    logsumexp, which cannot give log(0) when one side saturates.
    NCKD = KL over the non-target classes only, i.e. softmax of logits/T with the target logit
    lowered by 1000 (mdistiller's mask; exp(-1000) is 0 in float32, so the target drops out).
    """
    t = temperature
    z_s = student_logits.float() / t
    z_t = teacher_logits.float() / t
    gt = F.one_hot(labels, z_s.shape[1]).bool()

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(z, dim=1, keepdim=True)
        log_target = z.gather(1, labels[:, None]) - lse
        log_other = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1, keepdim=True) - lse
        return torch.cat([log_target, log_other], dim=1)

    batch = z_s.shape[0]
    tckd = F.kl_div(binary_log_probs(z_s), binary_log_probs(z_t), reduction="sum", log_target=True) * t * t / batch
    masked_s = F.log_softmax(z_s - 1000.0 * gt, dim=1)
    masked_t = F.log_softmax(z_t - 1000.0 * gt, dim=1)
    nckd = F.kl_div(masked_s, masked_t, reduction="sum", log_target=True) * t * t / batch
    return tckd, nckd


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """min((epoch + 1) / warmup, 1) for a 0-based epoch.

    mdistiller counts epochs from 1 and uses min(epoch / warmup, 1): its first epoch already has
    weight 1/warmup and epoch ``warmup`` reaches 1. Our epochs count from 0, so epoch + 1 gives
    the same schedule (weight 1 from 0-based epoch warmup - 1 on). warmup 0 means no ramp.
    """
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)


class DKD(Loss):
    """Decoupled KD (Zhao et al. 2022): warm-up x (alpha x TCKD + beta x NCKD).

    Published CIFAR-100 recipe: alpha 1, beta 8 (6 for vgg/wrn pairs, 2 for resnet56->20),
    T 4, 20 warm-up epochs, added to cross-entropy with weight 1 (mdistiller).
    """

    needs = frozenset({STUDENT_LOGITS, TEACHER_LOGITS, LABELS})

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup_epochs: int = 20,
                 standardize: bool = False):
        super().__init__()
        self.alpha, self.beta, self.temperature, self.warmup_epochs = alpha, beta, temperature, warmup_epochs
        self.standardize = standardize

    def forward(self, out: Outputs) -> torch.Tensor:
        student, teacher = out.student_logits, out.teacher_logits
        if self.standardize:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        tckd, nckd = dkd_parts(student, teacher, out.labels, self.temperature)
        epoch = getattr(out, "epoch", 0) or 0
        return warmup_factor(epoch, self.warmup_epochs) * (self.alpha * tckd + self.beta * nckd)


@hookimpl
def register_losses(register):
    register("hint", Hint, params=HintParams,
             description="FitNets (Romero et al. 2015): MSE between a regressed student feature and a teacher feature")
    register("attention", Attention, params=AttentionParams,
             description="attention transfer (Zagoruyko & Komodakis 2017): match normalised spatial attention maps")
    register("dkd", DKD, params=DKDParams,
             description="decoupled KD (Zhao et al. 2022): alpha x TCKD + beta x NCKD with a linear warm-up")
