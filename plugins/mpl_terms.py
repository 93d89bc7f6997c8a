"""The loss terms and model helpers of one Meta Pseudo Labels step (see docs/mpl.md)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Logits from autocast (bf16/fp16) to float32 for the losses; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def smooth(target: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing of a target distribution [B, C]."""
    return target if eps == 0 else target * (1 - eps) + eps / target.shape[1]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * logits.log_softmax(1)).sum(1).mean()


def uda_consistency(weak: torch.Tensor, strong: torch.Tensor, temperature: float,
                    threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """UDA's term and mask: KL(sharpened weak-view target || strong-view prediction), confident rows only.

    The target is ``softmax(weak / temperature)`` without gradient; rows whose
    target's top probability is below ``threshold`` count as zero in the
    batch mean (UDA and both MPL codes; their cross-entropy differs from this
    KL by the target's entropy, a constant: same gradient).
    """
    target = (weak.detach() / temperature).softmax(1)
    mask = (target.amax(1) >= threshold).to(strong.dtype)
    kl = (target * (target.clamp_min(1e-12).log() - strong.log_softmax(1))).sum(1)
    return (kl * mask).mean(), mask


def directional_log_probs(log_p: torch.Tensor, params: list[torch.Tensor],
                          direction: list[torch.Tensor]) -> torch.Tensor:
    """``J @ direction`` for ``J = d log_p / d params``: how each log-probability moves along ``direction``.

    Forward-mode by the double-vjp trick (``u -> J^T u`` is linear in ``u``,
    so the gradient of ``<J^T u, direction>`` w.r.t. ``u`` is ``J direction``);
    works with any module, BatchNorm included. ``log_p``'s graph is kept for
    the caller's backward.
    """
    u = torch.zeros_like(log_p, requires_grad=True)
    vjp = torch.autograd.grad(log_p, params, grad_outputs=u, create_graph=True, allow_unused=True)
    dot = sum((v * d).sum() for v, d in zip(vjp, direction, strict=True) if v is not None)
    return torch.autograd.grad(dot, u)[0].detach()


@contextlib.contextmanager
def same_noise(model: nn.Module, seed: int):
    """Dropout masks from ``seed`` and BatchNorm running statistics untouched.

    The student's labeled loss is measured before and after its step under
    this, so the two forwards differ only by the step: different dropout
    masks would add noise far larger than the step's effect to ``h``.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in norms:
            m.momentum = 0.0  # running = 1 * running + 0 * batch
        try:
            yield
        finally:
            for m, momentum in zip(norms, saved, strict=True):
                m.momentum = momentum
