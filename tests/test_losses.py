import math

import torch

from mentor.losses import Outputs
from mentor_plugins.losses import KD, CrossEntropy, kd_loss


def softmax(xs, t):
    exps = [math.exp(x / t) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


def test_kd_matches_hand_computation():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    t = 3.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p_s, p_t = softmax(s_row, t), softmax(t_row, t)
        expected += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    expected = expected / len(student) * t * t

    value = kd_loss(torch.tensor(student), torch.tensor(teacher), t)
    assert math.isclose(value.item(), expected, rel_tol=1e-5)
    out = Outputs(student_logits=torch.tensor(student), teacher_logits=torch.tensor(teacher))
    assert math.isclose(KD(temperature=t)(out).item(), expected, rel_tol=1e-5)


def test_kd_is_zero_when_student_equals_teacher_and_grows_with_gap():
    logits = torch.randn(5, 10)
    assert kd_loss(logits, logits, 4.0).abs().item() < 1e-6
    assert kd_loss(logits, logits * 2, 4.0).item() > 0


def test_kd_gradient_keeps_its_scale_at_high_temperature():
    # with the T^2 factor, d KD / d s -> (centred(s) - centred(t)) / (N * K) as T grows
    torch.manual_seed(0)
    s = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 10, dtype=torch.float64)
    kd_loss(s, t, 1000.0).backward()
    def centred(z):
        return z - z.mean(1, keepdim=True)
    limit = (centred(s.detach()) - centred(t)) / (4 * 10)
    assert torch.allclose(s.grad, limit, rtol=0.02, atol=1e-5)


def test_cross_entropy_with_label_smoothing_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    labels = torch.tensor([0])
    eps = 0.3
    p = softmax([2.0, 0.0, 0.0], 1.0)
    target = [1 - eps + eps / 3, eps / 3, eps / 3]
    expected = -sum(q * math.log(pi) for q, pi in zip(target, p, strict=True))
    out = Outputs(student_logits=logits, labels=labels)
    assert math.isclose(CrossEntropy(label_smoothing=eps)(out).item(), expected, rel_tol=1e-5)
