import math

import pytest
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


# --- logit standardization (Sun et al. 2024) ---------------------------------------------------

def z_scores_by_hand(row):
    n = len(row)
    mean = sum(row) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in row) / (n - 1))  # Bessel's correction, as the paper's code
    return [(x - mean) / (1e-7 + std) for x in row]


def test_standardized_logits_are_the_hand_z_scores_and_kd_uses_them():
    from mentor_plugins.losses import standardize_logits

    student = [[1.0, 2.0, 0.5, 4.0], [0.0, -1.0, 3.0, 3.0]]
    teacher = [[20.0, 10.0, 0.0, 5.0], [2.0, 2.5, 1.0, -4.0]]
    z = standardize_logits(torch.tensor(student))
    for got, row in zip(z.tolist(), student, strict=True):
        assert got == pytest.approx(z_scores_by_hand(row), rel=1e-5)
    # invariant to a logit's shift and scale: the point of the method
    assert torch.allclose(standardize_logits(torch.tensor(teacher) * 7 + 3), standardize_logits(torch.tensor(teacher)),
                          atol=1e-5)
    t = 2.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p_s, p_t = softmax(z_scores_by_hand(s_row), t), softmax(z_scores_by_hand(t_row), t)
        expected += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    expected = expected / 2 * t * t
    out = Outputs(student_logits=torch.tensor(student), teacher_logits=torch.tensor(teacher))
    assert math.isclose(KD(temperature=t, standardize=True)(out).item(), expected, rel_tol=1e-5)
    assert not math.isclose(KD(temperature=t)(out).item(), expected, rel_tol=1e-2)


def test_dkd_with_standardize_is_dkd_on_the_z_scores():
    from mentor_plugins.feature_losses import DKD
    from mentor_plugins.losses import standardize_logits

    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(5, 4, generator=g) * 3, torch.randn(5, 4, generator=g) * 9, torch.tensor([0, 1, 2, 3, 0])
    plain = DKD(warmup_epochs=0)(Outputs(student_logits=standardize_logits(s), teacher_logits=standardize_logits(t),
                                         labels=y))
    standardized = DKD(warmup_epochs=0, standardize=True)(Outputs(student_logits=s, teacher_logits=t, labels=y))
    assert math.isclose(standardized.item(), plain.item(), rel_tol=1e-6)


# --- DIST (Huang et al. 2022) --------------------------------------------------------------------

def pearson_by_hand(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_dist_relations_on_a_small_matrix_by_hand():
    from mentor_plugins.losses import DIST, dist_parts

    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, -1.0]]
    teacher = [[2.0, 1.0, 0.0], [1.0, 0.5, 1.5], [3.0, -2.0, 0.0]]
    tau = 4.0
    y_s = [softmax(r, tau) for r in student]
    y_t = [softmax(r, tau) for r in teacher]
    inter = 1 - sum(pearson_by_hand(a, b) for a, b in zip(y_s, y_t, strict=True)) / 3
    columns = lambda m: [[row[c] for row in m] for c in range(3)]  # noqa: E731
    intra = 1 - sum(pearson_by_hand(a, b) for a, b in zip(columns(y_s), columns(y_t), strict=True)) / 3
    got_inter, got_intra = dist_parts(torch.tensor(student), torch.tensor(teacher), tau)
    assert math.isclose(got_inter.item(), inter * tau ** 2, rel_tol=1e-4)
    assert math.isclose(got_intra.item(), intra * tau ** 2, rel_tol=1e-4)
    out = Outputs(student_logits=torch.tensor(student), teacher_logits=torch.tensor(teacher))
    total = DIST(temperature=tau, beta=2.0, gamma=0.5)(out).item()
    assert math.isclose(total, (2.0 * inter + 0.5 * intra) * tau ** 2, rel_tol=1e-4)
    # the same distributions are perfectly correlated: no loss, up to the eps of 1e-8 in the denominator
    same = Outputs(student_logits=torch.tensor(teacher), teacher_logits=torch.tensor(teacher))
    assert abs(DIST(temperature=tau)(same).item()) < 1e-4
