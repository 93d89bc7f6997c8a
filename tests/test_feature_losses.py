import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from mentor import Params
from mentor.losses import LABELS, STUDENT_LOGITS, TEACHER_LOGITS, Outputs
from mentor.plugins import load_plugins
from mentor_plugins import feature_losses
from mentor_plugins.feature_losses import (
    DKD,
    Attention,
    AttentionParams,
    DKDParams,
    Hint,
    HintParams,
    dkd_parts,
    warmup_factor,
)

# ---------------------------------------------------------------------------------------------
# DKD


def softmax(xs, t):
    exps = [math.exp(x / t) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[3.0, 1.0, -1.0], [0.5, 2.0, 1.0]]
LABELS_ = [0, 2]
T = 2.0


def dkd_by_hand(student, teacher, labels, t):
    """TCKD and NCKD per Zhao et al. 2022, summed over classes, averaged over the batch, times T^2."""
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(student, teacher, labels, strict=True):
        p_s, p_t = softmax(s_row, t), softmax(t_row, t)
        tckd += kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
        # non-target classes, renormalised: softmax over the remaining logits
        nt_s = [p / (1 - p_s[y]) for j, p in enumerate(p_s) if j != y]
        nt_t = [p / (1 - p_t[y]) for j, p in enumerate(p_t) if j != y]
        nckd += kl(nt_t, nt_s)
    n = len(student)
    return tckd / n * t * t, nckd / n * t * t


def dkd_outputs(epoch=None):
    out = Outputs(student_logits=torch.tensor(STUDENT), teacher_logits=torch.tensor(TEACHER),
                  labels=torch.tensor(LABELS_))
    if epoch is not None:
        out.epoch = epoch
    return out


def test_dkd_parts_match_hand_computation():
    tckd, nckd = dkd_by_hand(STUDENT, TEACHER, LABELS_, T)
    got_t, got_n = dkd_parts(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS_), T)
    assert tckd > 0 and nckd > 0
    assert math.isclose(got_t.item(), tckd, rel_tol=1e-5)
    assert math.isclose(got_n.item(), nckd, rel_tol=1e-5)


@pytest.mark.parametrize("epoch, factor", [(1, 2 / 5), (4, 1.0), (10, 1.0)])
def test_dkd_total_with_warmup_ramp(epoch, factor):
    alpha, beta = 0.5, 3.0
    tckd, nckd = dkd_by_hand(STUDENT, TEACHER, LABELS_, T)
    loss = DKD(alpha=alpha, beta=beta, temperature=T, warmup_epochs=5)
    assert math.isclose(loss(dkd_outputs(epoch)).item(), factor * (alpha * tckd + beta * nckd), rel_tol=1e-5)


def test_dkd_without_epoch_field_is_first_epoch_and_zero_warmup_is_no_ramp():
    alpha, beta = 0.5, 3.0
    tckd, nckd = dkd_by_hand(STUDENT, TEACHER, LABELS_, T)
    full = alpha * tckd + beta * nckd
    out = dkd_outputs()  # no epoch given: epoch 0 (before and after Outputs gains the field)
    assert math.isclose(DKD(alpha, beta, T, warmup_epochs=4)(out).item(), full / 4, rel_tol=1e-5)
    assert math.isclose(DKD(alpha, beta, T, warmup_epochs=0)(dkd_outputs(0)).item(), full, rel_tol=1e-5)


def test_warmup_factor_matches_mdistiller_one_based_schedule():
    # mdistiller: min(e / 20, 1) for e = 1, 2, ...; ours: epoch e - 1
    for e in range(1, 30):
        assert warmup_factor(e - 1, 20) == min(e / 20, 1.0)
    assert warmup_factor(0, 0) == 1.0


def test_dkd_zero_when_equal_and_float32_under_bf16():
    logits = torch.randn(4, 10)
    labels = torch.tensor([0, 3, 9, 5])
    tckd, nckd = dkd_parts(logits, logits, labels, 4.0)
    assert abs(tckd.item()) < 1e-6 and abs(nckd.item()) < 1e-5
    out = Outputs(student_logits=logits.bfloat16(), teacher_logits=(logits * 2).bfloat16(), labels=labels)
    value = DKD()(out)
    assert value.dtype == torch.float32 and value.dim() == 0 and torch.isfinite(value)


def test_dkd_tckd_finite_when_teacher_saturates():
    # p_target of the teacher rounds to 1 in float32: mdistiller's log(sum of probs) would hit log(0)
    student = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[200.0, 0.0, 0.0]])
    tckd, nckd = dkd_parts(student, teacher, torch.tensor([0]), 1.0)
    (tckd + nckd).backward()
    assert torch.isfinite(tckd) and torch.isfinite(nckd) and torch.isfinite(student.grad).all()


def test_dkd_needs():
    assert DKD.needs == {STUDENT_LOGITS, TEACHER_LOGITS, LABELS}


# ---------------------------------------------------------------------------------------------
# Attention transfer


def at_by_hand(f, p):
    """f: [C][H][W] nested lists (one sample) -> normalised attention vector."""
    c, h, w = len(f), len(f[0]), len(f[0][0])
    a = [sum(abs(f[k][i][j]) ** p for k in range(c)) / c for i in range(h) for j in range(w)]
    norm = math.sqrt(sum(x * x for x in a))
    return [x / norm for x in a]


def at_loss_by_hand(fs, ft, p):
    a_s, a_t = at_by_hand(fs, p), at_by_hand(ft, p)
    return sum((x - y) ** 2 for x, y in zip(a_s, a_t, strict=True)) / len(a_s)


FS = [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]
FT = [[[2.0, 0.0], [1.0, 1.0]], [[1.0, -3.0], [0.5, 2.0]]]


def at_outputs(student_features, teacher_features):
    return Outputs(student_logits=torch.zeros(1, 2), student_features=student_features,
                   teacher_features=teacher_features)


def test_attention_matches_hand_computation():
    expected = at_loss_by_hand(FS, FT, 2.0)
    assert expected > 0
    loss = Attention(pairs=[("s1", "t1")], p=2.0)
    loss.build({"s1": torch.Size([1, 2, 2, 2])}, {"t1": torch.Size([1, 2, 2, 2])})
    value = loss(at_outputs({"s1": torch.tensor([FS])}, {"t1": torch.tensor([FT])}))
    assert math.isclose(value.item(), expected, rel_tol=1e-5)
    # p = 2 with the paper's |f| equals RepDistiller's f.pow(2), negative entries included
    a = F.normalize(torch.tensor([FT]).pow(2).mean(1).view(1, -1))
    b = F.normalize(torch.tensor([FS]).pow(2).mean(1).view(1, -1))
    assert math.isclose(value.item(), (b - a).pow(2).mean().item(), rel_tol=1e-5)


def test_attention_sums_over_pairs_as_published_and_is_zero_for_identical():
    """RepDistiller/mdistiller: loss_kd = sum(loss_group) * beta; one pair's term is not divided by the pairs."""
    fs, ft = torch.tensor([FS]), torch.tensor([FT])
    loss = Attention(pairs=[("a", "x"), ("b", "y")], p=2.0)
    assert loss.student_nodes == ("a", "b") and loss.teacher_nodes == ("x", "y")
    value = loss(at_outputs({"a": fs, "b": fs}, {"x": ft, "y": fs}))  # pair 2 is identical: adds 0
    assert math.isclose(value.item(), at_loss_by_hand(FS, FT, 2.0), rel_tol=1e-5)
    both = loss(at_outputs({"a": fs, "b": ft}, {"x": ft, "y": fs}))  # two pairs each at the hand value
    assert math.isclose(both.item(), 2 * at_loss_by_hand(FS, FT, 2.0), rel_tol=1e-5)
    f = torch.rand(3, 4, 5, 5)
    assert Attention(pairs=[("a", "x")])(at_outputs({"a": f}, {"x": f.clone()})).item() == 0.0


def pool2x2(f):
    """Average 2x2 blocks of a [C][2H][2W] nested list."""
    return [[[(ch[2 * i][2 * j] + ch[2 * i][2 * j + 1] + ch[2 * i + 1][2 * j] + ch[2 * i + 1][2 * j + 1]) / 4
              for j in range(len(ch[0]) // 2)] for i in range(len(ch) // 2)] for ch in f]


def test_attention_pools_the_larger_map():
    torch.manual_seed(0)
    big = torch.randn(1, 2, 4, 4)
    pooled = pool2x2(big[0].tolist())
    expected = at_loss_by_hand(pooled, FT, 2.0)
    loss = Attention(pairs=[("s", "t")], p=2.0)
    # student larger: the student map is pooled to the teacher's (H, W)
    value = loss(at_outputs({"s": big}, {"t": torch.tensor([FT])}))
    assert math.isclose(value.item(), expected, rel_tol=1e-5)
    # teacher larger: the teacher's map is pooled (never upsample the student)
    value = loss(at_outputs({"s": torch.tensor([FT])}, {"t": big}))
    assert math.isclose(value.item(), expected, rel_tol=1e-5)


def test_attention_fractional_p_and_gradients():
    fs = torch.randn(2, 3, 4, 4, requires_grad=True)
    ft = torch.randn(2, 5, 4, 4, requires_grad=True)
    value = Attention(pairs=[("s", "t")], p=1.5)(at_outputs({"s": fs.bfloat16()}, {"t": ft}))
    value.backward()
    assert torch.isfinite(value) and value.dtype == torch.float32
    assert fs.grad is not None and ft.grad is None


def test_attention_build_rejects_vectors():
    loss = Attention(pairs=[("s", "t")])
    with pytest.raises(ValueError, match="'s'"):
        loss.build({"s": torch.Size([2, 8])}, {"t": torch.Size([2, 4, 3, 3])})


def test_attention_needs_only_features():
    assert Attention.needs == frozenset()


# ---------------------------------------------------------------------------------------------
# FitNets hint


def built_hint(s_shape, t_shape, relu=True):
    loss = Hint(student_node="s", teacher_node="t", relu=relu)
    loss.build({"s": torch.Size(s_shape)}, {"t": torch.Size(t_shape)})
    return loss


def hint_outputs(s, t):
    return Outputs(student_logits=torch.zeros(s.shape[0], 2), student_features={"s": s}, teacher_features={"t": t})


@pytest.mark.parametrize("s_shape, t_shape, first", [
    ((2, 4, 8, 8), (2, 6, 8, 8), nn.Conv2d),            # same size, other channels: 1x1 conv
    ((2, 4, 8, 8), (2, 6, 4, 4), nn.Conv2d),            # student 2x: 3x3 stride-2 conv
    ((2, 4, 4, 4), (2, 6, 8, 8), nn.ConvTranspose2d),   # student half: transposed conv
    ((2, 4, 10, 9), (2, 6, 8, 8), nn.Conv2d),           # student a few pixels larger: valid conv
    ((2, 4, 5, 5), (2, 6, 8, 8), feature_losses._Resize),  # smaller, not half: resize then 1x1
])
def test_hint_conv_regressors(s_shape, t_shape, first):
    loss = built_hint(s_shape, t_shape)
    layers = list(loss.regressor)
    assert isinstance(layers[0], first)
    assert isinstance(layers[-2], nn.BatchNorm2d) and isinstance(layers[-1], nn.ReLU)
    conv = layers[0] if first is not feature_losses._Resize else layers[1]
    expected_kernel = {
        ((8, 8), (8, 8)): (1, 1), ((8, 8), (4, 4)): (3, 3), ((4, 4), (8, 8)): (4, 4),
        ((10, 9), (8, 8)): (3, 2), ((5, 5), (8, 8)): (1, 1),
    }[(s_shape[2:], t_shape[2:])]
    assert conv.kernel_size == expected_kernel
    assert conv.in_channels == s_shape[1] and conv.out_channels == t_shape[1]
    if expected_kernel == (3, 3):
        assert conv.stride == (2, 2)
    s, t = torch.randn(s_shape), torch.randn(t_shape)
    assert loss.regressor(s).shape == t.shape
    value = loss(hint_outputs(s, t))
    assert value.dim() == 0 and torch.isfinite(value)


def test_hint_vectors_use_linear():
    loss = built_hint((3, 16), (3, 32))
    assert isinstance(loss.regressor, nn.Linear)
    assert (loss.regressor.in_features, loss.regressor.out_features) == (16, 32)
    value = loss(hint_outputs(torch.randn(3, 16), torch.randn(3, 32)))
    assert value.dim() == 0


@pytest.mark.parametrize("s_shape, t_shape", [((2, 4, 8, 8), (2, 16)), ((2, 16), (2, 4, 8, 8))])
def test_hint_mismatched_ranks_raise(s_shape, t_shape):
    loss = Hint(student_node="layer2", teacher_node="layer3.0.add")
    with pytest.raises(ValueError) as info:
        loss.build({"layer2": torch.Size(s_shape)}, {"layer3.0.add": torch.Size(t_shape)})
    message = str(info.value)
    assert "layer2" in message and "layer3.0.add" in message
    assert str(tuple(s_shape)) in message and str(tuple(t_shape)) in message


def test_hint_forward_before_build_raises():
    loss = Hint(student_node="s", teacher_node="t")
    with pytest.raises(RuntimeError, match="build"):
        loss(hint_outputs(torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)))


def test_hint_gradients_reach_regressor_and_student_not_teacher():
    torch.manual_seed(0)
    loss = built_hint((2, 3, 8, 8), (2, 5, 4, 4))
    s = torch.randn(2, 3, 8, 8, requires_grad=True)
    t = torch.randn(2, 5, 4, 4, requires_grad=True)  # would get a grad unless the loss detaches it
    loss(hint_outputs(s, t)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    for name, param in loss.named_parameters():
        assert param.grad is not None, name
    assert loss.regressor[0].weight.grad.abs().sum() > 0


def test_hint_with_identity_regressor_is_plain_mse():
    loss = built_hint((1, 3, 2, 2), (1, 3, 2, 2))
    conv, bn = loss.regressor[0], loss.regressor[1]
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        conv.bias.zero_()
    bn.eps = 0.0  # running stats are mean 0, var 1: in eval mode BN is then the identity
    loss.eval()
    # positive student values, so the final ReLU is the identity too
    s_list = [[[0.5, 1.0], [2.0, 0.25]], [[1.5, 0.1], [0.2, 3.0]], [[0.7, 0.8], [0.9, 1.1]]]
    t_list = [[[1.0, 0.0], [2.5, 0.5]], [[1.0, 0.3], [0.0, 2.0]], [[0.0, 1.8], [0.4, 1.0]]]
    s, t = torch.tensor([s_list]), torch.tensor([t_list])
    flat_s = [x for ch in s_list for row in ch for x in row]
    flat_t = [x for ch in t_list for row in ch for x in row]
    expected = sum((a - b) ** 2 for a, b in zip(flat_s, flat_t, strict=True)) / len(flat_s)
    value = loss(hint_outputs(s, t))
    assert math.isclose(value.item(), expected, rel_tol=1e-5)
    assert math.isclose(value.item(), F.mse_loss(s, t).item(), rel_tol=1e-5)


def test_hint_nodes_and_needs():
    loss = Hint(student_node="layer2", teacher_node="layer2")
    assert loss.student_nodes == ("layer2",) and loss.teacher_nodes == ("layer2",)
    assert Hint.needs == frozenset()


def test_hint_without_relu_can_match_negative_targets():
    loss = built_hint((2, 3, 4, 4), (2, 3, 4, 4), relu=False)
    assert not any(isinstance(m, nn.ReLU) for m in loss.regressor)


# ---------------------------------------------------------------------------------------------
# Registration


def test_register_losses_registers_all_three():
    seen = {}

    def register(name, factory, params=None, description=None):
        seen[name] = (factory, params, description)

    feature_losses.register_losses(register)
    assert set(seen) == {"hint", "attention", "dkd"}
    for name, (_factory, params, description) in seen.items():
        assert issubclass(params, Params), name
        assert description and "\n" not in description, name
    assert seen["hint"][0] is Hint and seen["attention"][0] is Attention and seen["dkd"][0] is DKD


@pytest.mark.parametrize("model, values", [
    (DKDParams, {"temperature": 0}),
    (DKDParams, {"alpha": -1}),
    (DKDParams, {"warmup_epochs": -1}),
    (AttentionParams, {"pairs": [["a", "b"]], "p": 0}),
    (AttentionParams, {"pairs": []}),
    (AttentionParams, {}),
    (AttentionParams, {"pairs": [["a", ""]]}),
    (HintParams, {"student_node": "layer2"}),
    (HintParams, {"student_node": "a", "teacher_node": "b", "weight": 3}),
])
def test_invalid_params_are_rejected(model, values):
    with pytest.raises(ValidationError):
        model.model_validate(values)


def test_components_build_through_the_registry():
    registry = load_plugins(extra=[feature_losses], entry_points=False).registry
    dkd = registry.get("loss", "dkd").build()
    assert (dkd.alpha, dkd.beta, dkd.temperature, dkd.warmup_epochs) == (1.0, 8.0, 4.0, 20)
    at = registry.get("loss", "attention").build(pairs=[["layer2", "layer3"]])
    assert at.pairs == [("layer2", "layer3")] and at.p == 2.0
    hint = registry.get("loss", "hint").build(student_node="layer2", teacher_node="layer2")
    assert hint.student_nodes == ("layer2",) and hint.relu is True
