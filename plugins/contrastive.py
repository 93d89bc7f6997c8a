"""CRD, contrastive representation distillation (Tian et al. 2020), as a loss plugin.

The student's and the teacher's penultimate features are embedded (a linear
head each, trained with the student: the teacher's head trains too, the
teacher does not) and L2-normalised. Two memory banks hold one embedding per
training image, keyed by its row in the training set (``mentor.INDEX``): the
student's embedding is contrasted with the teacher bank (its own image's row
is the positive, ``nce_k`` other rows the negatives), the teacher's with the
student bank. Each side's score is an NCE loss against a uniform noise
distribution; after the step, each image's bank entry moves towards its new
embedding with momentum ``nce_m``.

The negatives, as RepDistiller draws them by default (its ``mode: exact``):
``nce_k`` rows drawn without replacement from the images of the other classes
only, so that no negative is the anchor itself or an image of its class
(``negatives: exact``). ``negatives: uniform`` draws them from all rows with
replacement, as mentor did before: on 10 classes about a tenth of them are
then the anchor's own class, pushed apart against the cross-entropy.

Follows RepDistiller's CRD (the authors' code): exp(<v, m> / T) scores
normalised by a constant Z fixed from the first batch (mean score x N), the
NCE loss -[log P_pos / (P_pos + K/N) + sum log (K/N) / (P_neg + K/N)] / B per
side, banks initialised uniform in +-1/sqrt(d/3). Its published CIFAR-100
setting: CE + 0.8 x CRD, d 128, K 16384, T 0.07, momentum 0.5.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mentor import INDEX, Loss, Outputs, Params, hookimpl

NCE_EPS = 1e-7  # RepDistiller's eps in the NCE log terms


class CRDParams(Params):
    student_node: str = Field(default="flatten", description="the student's feature node (`mentor layers`)")
    teacher_node: str = Field(default="flatten", description="the teacher's feature node")
    feat_dim: int = Field(default=128, ge=1, description="embedding size d of both heads")
    nce_k: int = Field(default=16384, ge=1, description="negatives per positive K (below the training set size)")
    nce_t: float = Field(default=0.07, gt=0, description="temperature T of the scores")
    nce_m: float = Field(default=0.5, ge=0, lt=1, description="momentum of the memory banks' update")
    negatives: Literal["exact", "uniform"] = Field(
        default="exact", description="exact: without replacement from the other classes (RepDistiller's "
        "default); uniform: from all rows with replacement")


def nce_loss(scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """NCE loss of [B, K + 1] normalised scores (column 0: the positive) against uniform noise 1/N."""
    batch, k = scores.shape[0], scores.shape[1] - 1
    noise = k / n_data  # K x P_n
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + NCE_EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + NCE_EPS))
    return -(positive.sum() + negative.sum()) / batch


class CRD(Loss):
    """Contrastive representation distillation: the student's embedding must pick out its own image's
    teacher embedding among K others, and the other way round (see the module doc)."""

    needs = frozenset({INDEX})

    def __init__(self, student_node: str = "flatten", teacher_node: str = "flatten", feat_dim: int = 128,
                 nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5, negatives: str = "exact"):
        super().__init__()
        self.student_nodes, self.teacher_nodes = (student_node,), (teacher_node,)
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = feat_dim, nce_k, nce_t, nce_m
        self.negatives = negatives

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        n = self.dataset_size
        if n is None:
            raise ValueError("crd: needs the training set's size (a stage that passes Outputs.index sets it)")
        if self.nce_k >= n:
            raise ValueError(f"crd: nce_k {self.nce_k} must be below the {n} training images (the negatives "
                             "are other images' rows)")
        if self.negatives == "exact":
            if self.dataset_labels is None or len(self.dataset_labels) != n:
                raise ValueError("crd: negatives: exact draws from the other classes and needs the training "
                                 "set's labels (a stage that passes Outputs.index sets dataset_labels)")
            labels = torch.as_tensor(self.dataset_labels).long()
            fewest = n - int(torch.bincount(labels).max())
            if self.nce_k > fewest:
                raise ValueError(f"crd: nce_k {self.nce_k} is more than the {fewest} images outside the largest "
                                 "class (negatives: exact draws without replacement from the other classes): "
                                 "lower nce_k, or use negatives: uniform")
            self.register_buffer("labels", labels, persistent=False)
        dims = [math.prod(shape[1:]) for shape in (student_shapes[self.student_nodes[0]],
                                                   teacher_shapes[self.teacher_nodes[0]])]
        self.embed_s = nn.Linear(dims[0], self.feat_dim)
        self.embed_t = nn.Linear(dims[1], self.feat_dim)
        bound = 1.0 / math.sqrt(self.feat_dim / 3)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("memory_s", torch.rand(n, self.feat_dim, generator=g) * 2 * bound - bound)
        self.register_buffer("memory_t", torch.rand(n, self.feat_dim, generator=g) * 2 * bound - bound)
        self.register_buffer("z", torch.full((2,), -1.0))  # Z of (student vs teacher bank, teacher vs student bank)

    def embed(self, out: Outputs) -> tuple[torch.Tensor, torch.Tensor]:
        f_s = out.student_features[self.student_nodes[0]].float().flatten(1)
        f_t = out.teacher_features[self.teacher_nodes[0]].detach().float().flatten(1)
        return F.normalize(self.embed_s(f_s), dim=1), F.normalize(self.embed_t(f_t), dim=1)

    def contrast(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor,
                 negatives: torch.Tensor) -> torch.Tensor:
        """The loss for embeddings [B, d] of rows ``index`` [B] against bank rows ``negatives`` [B, K]; then
        the banks move towards these embeddings (no gradient through them)."""
        rows = torch.cat([index[:, None], negatives], dim=1)
        n = self.memory_s.shape[0]
        scores = []
        for side, (v, bank) in enumerate(((v_s, self.memory_t), (v_t, self.memory_s))):
            out = torch.exp(torch.bmm(bank[rows].detach(), v[:, :, None]).squeeze(2) / self.nce_t)
            if self.z[side] < 0:  # fixed once, from the first batch, as the authors do
                self.z[side] = out.mean().detach() * n
            scores.append(out / self.z[side].clone())  # a copy: the in-place Z update must not touch the graph
        loss = nce_loss(scores[0], n) + nce_loss(scores[1], n)
        with torch.no_grad():
            for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                bank[index] = F.normalize(bank[index] * self.nce_m + v.detach() * (1 - self.nce_m), dim=1)
        return loss

    def forward(self, out: Outputs) -> torch.Tensor:
        if out.index is None:
            raise ValueError("crd: the batch carries no sample index (Outputs.index)")
        v_s, v_t = self.embed(out)
        return self.contrast(v_s, v_t, out.index, self.draw_negatives(out.index))

    def draw_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """``nce_k`` bank rows per anchor row in ``index`` [B]: ``[B, K]`` (see ``negatives``)."""
        if self.negatives == "uniform":
            return torch.randint(self.memory_s.shape[0], (len(index), self.nce_k), device=index.device)
        labels = self.labels.to(index.device)
        other = (labels[None, :] != labels[index][:, None]).float()  # [B, N]: 1 where a row may be drawn
        return torch.multinomial(other, self.nce_k, replacement=False)


@hookimpl
def register_losses(register):
    register("crd", CRD, params=CRDParams,
             description="CRD (Tian et al. 2020): contrast embedded student and teacher features against memory "
             "banks keyed by sample index")
