"""Two loss terms: one on logits (Jensen-Shannon), one on features (similarity-preserving)."""

import torch
import torch.nn.functional as F
from pydantic import Field

import mentor
from mentor import Params, hookimpl


class JSParams(Params):
    temperature: float = Field(default=4.0, gt=0, description="softens both distributions")


class JensenShannon(mentor.Loss):
    """T^2 * JS(p_teacher || p_student) with both softmaxes at temperature T: a symmetric KD."""

    needs = frozenset({mentor.STUDENT_LOGITS, mentor.TEACHER_LOGITS})

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, out: mentor.Outputs) -> torch.Tensor:
        t = self.temperature
        p = F.softmax(out.student_logits.float() / t, dim=1)
        q = F.softmax(out.teacher_logits.float() / t, dim=1)
        m = (0.5 * (p + q)).clamp_min(1e-12).log()
        js = 0.5 * (F.kl_div(m, p, reduction="batchmean") + F.kl_div(m, q, reduction="batchmean"))
        return js * t * t


class SPParams(Params):
    student_node: str = Field(description="a student node (see `mentor layers`)")
    teacher_node: str = Field(description="a teacher node")


class SimilarityPreserving(mentor.Loss):
    """Tung & Mori (ICCV 2019): the student's batch similarity matrix matches the teacher's.

    G = F F^T over a batch's flattened features, each row L2-normalised; the
    loss is ||G_s - G_t||_F^2 / b^2. It needs no parameters of its own, so the
    two features may have any widths.
    """

    needs = frozenset()

    def __init__(self, student_node: str, teacher_node: str):
        super().__init__()
        self.student_nodes, self.teacher_nodes = (student_node,), (teacher_node,)

    @staticmethod
    def similarity(features: torch.Tensor) -> torch.Tensor:
        flat = features.float().flatten(1)
        return F.normalize(flat @ flat.t(), dim=1)

    def forward(self, out: mentor.Outputs) -> torch.Tensor:
        g_s = self.similarity(out.student_features[self.student_nodes[0]])
        g_t = self.similarity(out.teacher_features[self.teacher_nodes[0]])
        return (g_s - g_t).pow(2).sum() / g_s.shape[0] ** 2


@hookimpl
def register_losses(register):
    register("js_divergence", JensenShannon, params=JSParams,
             description="Jensen-Shannon divergence between softened teacher and student outputs")
    register("similarity_preserving", SimilarityPreserving, params=SPParams,
             description="match the batch similarity matrices of two feature nodes (Tung & Mori 2019)")
