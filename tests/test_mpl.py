"""Meta Pseudo Labels: the teacher's update against an exact computation, gradient flow, the stage.

The exact reference differentiates through the student's SGD step
(``torch.func.functional_call`` with ``create_graph=True``):
``theta' = theta - lr * grad_theta CE(target(phi), S(x_u; theta))`` and the
teacher should descend ``L_l(theta')``, the student's labeled loss after it.
"""

import copy
import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from torch import nn
from torch.func import functional_call

from mentor import hookimpl
from mentor.config import load_experiment, validate_document
from mentor.config.document import Document
from mentor.pipeline import run_experiment
from mentor.plugins import load_plugins
from mentor_plugins.consistency import ema_update
from mentor_plugins.models.small_cnn import small_cnn
from mentor_plugins.mpl import _student_schedule, run_mpl
from mentor_plugins.mpl_config import MPLStage
from mentor_plugins.mpl_step import MetaPseudoLabels
from mentor_plugins.mpl_terms import uda_consistency

from .conftest import SyntheticData

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
D, K, H, B_U = 4, 3, 5, 3  # input size, classes, student hidden units, unlabeled batch (K**B_U = 27 label draws)


class Tiny:
    """A linear teacher and a one-hidden-layer student in float64, with labeled and unlabeled batches."""

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        self.teacher = nn.Linear(D, K).double()
        self.student = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, K)).double()
        self.theta = copy.deepcopy(self.student.state_dict())
        self.x_l = torch.randn(6, D, dtype=torch.float64)
        self.y_l = torch.randint(K, (6,))
        self.x_uw = torch.randn(B_U, D, dtype=torch.float64)
        self.x_us = self.x_uw + 0.3 * torch.randn(B_U, D, dtype=torch.float64)  # a different "strong" view
        self.phi = dict(self.teacher.named_parameters())

    def source(self, view):
        return self.x_us if view == "strong" else self.x_uw

    def loss_after_step(self, target, lr):
        """L_l(theta'): the student's labeled loss after one exact SGD step on ``target`` (differentiable)."""
        self.student.load_state_dict(self.theta)
        theta = {k: v.detach().clone().requires_grad_(True) for k, v in self.student.named_parameters()}
        log_p = functional_call(self.student, theta, (self.x_us,)).log_softmax(1)
        grads = torch.autograd.grad(-(target * log_p).sum(1).mean(), list(theta.values()), create_graph=True)
        stepped = {k: p - lr * g for (k, p), g in zip(theta.items(), grads, strict=True)}
        return F.cross_entropy(functional_call(self.student, stepped, (self.x_l,)), self.y_l)

    def implemented(self, options, lr, labels=None, baseline=0.0):
        """The gradient the implementation gives the teacher from its MPL term, from theta."""
        self.student.load_state_dict(self.theta)
        mpl = MetaPseudoLabels(self.teacher, self.student, torch.optim.SGD(self.teacher.parameters(), lr=0.1),
                               torch.optim.SGD(self.student.parameters(), lr=lr), options)
        mpl.counters.baseline = torch.tensor(baseline, dtype=torch.float64)
        terms, _ = mpl.losses(self.x_l, self.y_l, self.x_uw, self.x_us, labels=labels)
        return flat(torch.autograd.grad(terms["mpl"], list(self.teacher.parameters())))


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def options(**kw):
    return MPLStage(student="s", teacher="t", **kw)


# --- the teacher's update against exact computations ---------------------------------------


@pytest.mark.parametrize("view", ["strong", "weak"])
def test_soft_labels_follow_the_exact_second_order_gradient(view):
    """Soft labels: L_l(theta'(phi)) is differentiable in the teacher, so compare with its exact gradient.

    The implementation uses the first-order expansion of L_l(theta') in the
    student's learning rate (the paper's Taylor step), so the two agree up to
    O(lr): cosine -> 1 as lr -> 0. The reversed sign must point the other way.
    """
    tiny = Tiny()
    cosines = {}
    for lr in (1e-3, 1e-2, 1e-1):
        target = functional_call(tiny.teacher, tiny.phi, (tiny.source(view),)).softmax(1)
        exact = flat(torch.autograd.grad(tiny.loss_after_step(target, lr), list(tiny.phi.values())))
        paper = tiny.implemented(options(labels="soft", label_view=view), lr)
        reversed_ = tiny.implemented(options(labels="soft", label_view=view, feedback_sign="new_minus_old"), lr)
        cosines[lr] = cosine(paper, exact)
        assert cosine(reversed_, exact) == pytest.approx(-cosines[lr])
        assert paper.norm() / exact.norm() == pytest.approx(1, abs=0.05)  # same scale, not just direction
    assert cosines[1e-3] > 0.99999 and cosines[1e-2] > 0.9999 and cosines[1e-1] > 0.999
    assert cosines[1e-3] >= cosines[1e-2] >= cosines[1e-1]  # first order: closer for smaller steps


@pytest.mark.parametrize("view", ["strong", "weak"])
@pytest.mark.parametrize("baseline", [None, 0.3])
def test_sampled_labels_are_an_unbiased_estimate_of_the_exact_gradient(view, baseline):
    """Hard labels: the exact gradient goes through the sampling distribution, not through the label.

    ``E(phi) = sum_y p(y | phi) L_l(theta'(y))`` over every joint draw of the
    3 labels (27 on this problem), differentiated by autograd. The
    implementation's update is a REINFORCE estimate; its expectation
    ``sum_y p(y) grad(h(y) * CE(y, T))`` is computed with the same
    enumeration, forcing each draw. With ``h = L_old - L_new`` measured (not
    linearised) the two agree exactly, at any learning rate (here 0.5), and a
    baseline that does not depend on the draw changes nothing. The expectation
    is ``1 / B`` of the exact gradient: CE is a batch mean, log p(y) a sum.
    """
    tiny = Tiny(seed=1)
    lr = 0.5
    probs = functional_call(tiny.teacher, tiny.phi, (tiny.source(view),)).softmax(1)
    kind = {"baseline": "none"} if baseline is None else {"baseline": "ema"}
    expected_loss = 0.0
    paper = reversed_ = 0.0
    for draw in itertools.product(range(K), repeat=B_U):
        labels = torch.tensor(draw)
        p = probs[torch.arange(B_U), labels].prod()
        expected_loss = expected_loss + p * tiny.loss_after_step(F.one_hot(labels, K).double(), lr).detach()
        paper = paper + p.detach() * tiny.implemented(
            options(labels="sampled", label_view=view, **kind), lr, labels, baseline or 0.0)
        reversed_ = reversed_ + p.detach() * tiny.implemented(
            options(labels="sampled", label_view=view, feedback_sign="new_minus_old", **kind), lr, labels,
            baseline or 0.0)
    exact = flat(torch.autograd.grad(expected_loss, list(tiny.phi.values())))
    assert cosine(paper, exact) > 1 - 1e-9
    assert cosine(reversed_, exact) < -(1 - 1e-9)
    assert torch.allclose(paper, exact / B_U, rtol=1e-6, atol=1e-12)


def test_the_official_soft_mpl_term_has_no_gradient_and_ours_has():
    """The official code's MPL term is CE(stop_grad(softmax(t)), t): its gradient is softmax - softmax = 0."""
    tiny = Tiny()
    logits = tiny.teacher(tiny.x_us)
    official = -(logits.softmax(1).detach() * logits.log_softmax(1)).sum(1).mean()
    assert flat(torch.autograd.grad(official, list(tiny.phi.values()))).abs().max() < 1e-12
    assert tiny.implemented(options(labels="soft"), 0.1).abs().max() > 1e-4


def test_argmax_labels_train_the_teacher_towards_its_own_argmax_scaled_by_h():
    """argmax (kekmodel) has no exact gradient to match (piecewise constant); check what it computes."""
    tiny = Tiny()
    grad = tiny.implemented(options(labels="argmax", baseline="none"), 0.1)
    tiny.student.load_state_dict(tiny.theta)
    mpl = MetaPseudoLabels(tiny.teacher, tiny.student, torch.optim.SGD(tiny.teacher.parameters(), lr=0.1),
                           torch.optim.SGD(tiny.student.parameters(), lr=0.1), options(labels="argmax"))
    _, metrics = mpl.losses(tiny.x_l, tiny.y_l, tiny.x_uw, tiny.x_us)
    logits = tiny.teacher(tiny.x_us)
    reference = metrics["mpl/h"] * F.cross_entropy(logits, logits.argmax(1))
    assert torch.allclose(grad, flat(torch.autograd.grad(reference, list(tiny.phi.values()))))


# --- every term carries gradient to its own model only -----------------------------------------


def conv_pair(seed=0):
    torch.manual_seed(seed)
    teacher = small_cnn(4, 1, channels=[4, 4], dropout=0.2)
    student = small_cnn(4, 1, channels=[4], hidden=8, dropout=0.2)
    g = torch.Generator().manual_seed(seed)
    batch = [torch.randn(8, 1, 8, 8, generator=g), torch.randint(4, (8,), generator=g),
             torch.randn(16, 1, 8, 8, generator=g), torch.randn(16, 1, 8, 8, generator=g)]
    return teacher, student, batch


def build(teacher, student, student_lr=0.1, **kw):
    return MetaPseudoLabels(teacher, student, torch.optim.SGD(teacher.parameters(), lr=0.1),
                            torch.optim.SGD(student.parameters(), lr=student_lr), options(**kw))


@pytest.mark.parametrize("labels", ["sampled", "argmax", "soft"])
def test_each_loss_term_has_gradient_on_its_model_and_none_on_the_other(labels):
    teacher, student, batch = conv_pair()
    before = copy.deepcopy(student.state_dict())
    mpl = build(teacher, student, labels=labels, uda={"threshold": 0.0}, label_smoothing=0.1)
    terms, metrics = mpl.losses(*batch)
    # the student's pseudo-label loss: applied to the student (it moved), nothing reached the teacher
    assert all(p.grad is None for p in teacher.parameters())
    assert sum(float(p.grad.abs().sum()) for p in student.parameters()) > 0
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in before.items() if v.is_floating_point())
    assert metrics["uda/mask_rate"] == 1.0
    assert set(terms) == {"mpl", "uda", "labeled_ce"}
    for name, term in terms.items():
        on_teacher = torch.autograd.grad(term, list(teacher.parameters()), retain_graph=True, allow_unused=True)
        assert sum(float(g.abs().sum()) for g in on_teacher if g is not None) > 0, name
        on_student = torch.autograd.grad(term, list(student.parameters()), retain_graph=True, allow_unused=True)
        assert all(g is None or float(g.abs().sum()) == 0 for g in on_student), name


def test_h_is_exactly_zero_when_the_student_does_not_move_despite_dropout_and_batchnorm():
    """Before and after the step the student sees the same dropout masks and batch statistics."""
    teacher, student, batch = conv_pair()
    mpl = build(teacher, student, student_lr=0.0, baseline="none")
    _, metrics = mpl.losses(*batch)
    assert metrics["mpl/h"] == 0
    assert all(m.momentum == 0.1 for m in student.modules() if isinstance(m, nn.BatchNorm2d))
    mpl = build(teacher, student, student_lr=0.5, baseline="none")
    assert mpl.losses(*batch)[1]["mpl/h"] != 0


def test_the_moving_baseline_averages_earlier_feedback_only():
    teacher, student, batch = conv_pair()
    mpl = build(teacher, student, baseline="ema", baseline_decay=0.9)
    first = mpl.step(*batch)
    assert first["mpl/feedback"] == first["mpl/h"]  # the baseline starts at 0
    assert first["mpl/baseline"] == pytest.approx(0.1 * float(first["mpl/h"]))
    second = mpl.step(*batch)
    assert second["mpl/feedback"] == pytest.approx(float(second["mpl/h"] - first["mpl/baseline"]))


def test_the_student_waits_while_the_teacher_learns_from_uda():
    teacher, student, batch = conv_pair()
    mpl = build(teacher, student, student_wait_steps=2, uda={"ramp_steps": 4, "threshold": 0.0})
    student_before = copy.deepcopy(student.state_dict())
    teacher_before = copy.deepcopy(teacher.state_dict())
    weights = []
    for _ in range(2):
        terms, _ = mpl.losses(*batch)
        assert "mpl" not in terms
        weights.append(mpl.step(*batch)["uda/weight"].item())
    params = [k for k, v in student_before.items() if v.is_floating_point() and "running" not in k]
    assert all(torch.equal(student_before[k], student.state_dict()[k]) for k in params)
    assert not torch.equal(teacher_before["fc.weight"], teacher.state_dict()["fc.weight"])
    assert "teacher/loss/mpl" in mpl.step(*batch)
    assert not torch.equal(student_before["fc.weight"], student.state_dict()["fc.weight"])
    assert weights == [8 * 1 / 4, 8 * 2 / 4]  # linear ramp over ramp_steps

    stage = options(student_wait_steps=3, epochs=2, schedule={"name": "cosine", "warmup_epochs": 0})
    schedule = _student_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), stage, 5)
    lrs = [schedule.lr_lambdas[0](s) for s in range(10)]
    assert lrs[:3] == [0, 0, 0] and lrs[3] == 1.0 and lrs[4] > lrs[5] > lrs[9] > 0


def test_uda_consistency_by_hand():
    weak = torch.tensor([[2.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    strong = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    value, mask = uda_consistency(weak, strong, temperature=0.7, threshold=0.6)
    target = (weak[0] / 0.7).softmax(0)
    assert mask.tolist() == [1.0, 0.0]  # the second row's sharpened confidence is below 0.6
    expected = (target * (target.log() - strong[0].log_softmax(0))).sum() / 2  # masked rows count as zero
    assert value == pytest.approx(float(expected))
    assert uda_consistency(weak, weak, 1.0, 0.0)[0] == pytest.approx(0, abs=1e-7)


def test_ema_update():
    ema, model = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    nn.init.constant_(ema.weight, 1.0)
    nn.init.constant_(model.weight, 3.0)
    model.running_mean.fill_(5.0)
    ema_update(ema, model, decay=0.75)
    assert torch.allclose(ema.weight, torch.full((2,), 1.5))
    assert torch.equal(ema.running_mean, model.running_mean)


# --- the stage in the pipeline -------------------------------------------------------------------


def mpl_config(tiny_config, **stage):
    config = copy.deepcopy(tiny_config)
    config["name"] = "mpl"
    config["data"] = {"source": "synthetic", "params": {"train_size": 600}, "val_size": 80, "labeled_per_class": 16}
    config["tracking"] = {"log_model": False}
    config["models"]["student"]["params"]["dropout"] = 0.2
    config["stages"] = [{
        "name": "mpl", "kind": "mpl", "teacher": "teacher", "student": "student", "epochs": 3, "batch_size": 16,
        "unlabeled_ratio": 2, "uda": {"ramp_steps": 4}, "ema_decay": 0.9, "student_wait_steps": 2,
        "strong_augment": {"magnitude": 9}, "augment": {"crop_padding": 1, "flip": True},
        "finetune": {"epochs": 1, "batch_size": 16, "optimizer": {"lr": 0.01}}, **stage}]
    return config


class StopAfter:
    """Interrupts like Ctrl-C at the n-th end of epoch of a stage."""

    def __init__(self, stage, calls):
        self.stage, self.calls = stage, calls

    @hookimpl
    def on_epoch_end(self, stage, ctx, epoch, metrics):
        if stage.name == self.stage:
            self.calls -= 1
            if self.calls == 0:
                raise KeyboardInterrupt


@pytest.mark.slow
def test_mpl_stage_logs_its_quantities_and_resumes_to_the_same_result(workdir, tiny_config):
    config = mpl_config(tiny_config)
    plugins = load_plugins(extra=[SyntheticData()])
    reference = run_experiment(validate_document(Document("t", config), plugins.registry), plugins)["mpl"]

    c = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("mpl").experiment_id])
    stage = next(r for r in runs if r.data.tags.get("mentor.stage") == "mpl")
    metrics = stage.data.metrics
    for key in ("mpl/h", "mpl/baseline", "mpl/feedback", "teacher/loss/mpl", "teacher/loss/uda",
                "teacher/loss/labeled_ce", "uda/mask_rate", "student/loss/pseudo", "lr/student", "lr/teacher"):
        assert f"train/{key}" in metrics, key
    accuracy = c.get_metric_history(stage.info.run_id, "pseudo/teacher_accuracy")
    assert sorted(m.step for m in accuracy) == [1, 2, 3] and all(0 <= m.value <= 1 for m in accuracy)
    steps = sorted(m.step for m in c.get_metric_history(stage.info.run_id, "val/accuracy"))
    assert steps == [1, 2, 3, 4]  # three MPL epochs, then the fine-tune continues the axis
    assert len(reference.history) == 1 and 0 <= reference.metrics["last.test.accuracy"] <= 1

    stopping = load_plugins(extra=[SyntheticData(), StopAfter("mpl", 2)])
    with pytest.raises(KeyboardInterrupt):  # after MPL epoch 2 of 3: teacher, optimizers, EMA, baseline on disk
        run_experiment(validate_document(Document("t", config), stopping.registry), stopping)
    resumed = run_experiment(validate_document(Document("t", config), plugins.registry), plugins, resume=True)["mpl"]
    assert resumed.metrics == reference.metrics
    strip = [{k: v for k, v in e.items() if k != "throughput"} for e in resumed.history]
    assert strip == [{k: v for k, v in e.items() if k != "throughput"} for e in reference.history]


def test_an_empty_unlabeled_split_is_a_clear_error():
    ctx = SimpleNamespace(splits=SimpleNamespace(unlabeled=[]))
    with pytest.raises(ValueError, match="stage 'mpl': the unlabeled split is empty"):
        run_mpl(options(name="mpl"), ctx)


@pytest.mark.slow
def test_recipes_validate_and_the_cifar10_recipe_runs_at_tiny_size(workdir, plugins):
    fashion = load_experiment(EXPERIMENTS / "fashion_mpl.yaml", [], plugins.registry)
    assert [s.kind for s in fashion.stages] == ["train", "pseudo_label", "mpl"]
    overrides = ["data.source=synthetic", "data.params={channels: 3, size: 32, train_size: 100, test_size: 8}",
                 "data.val_size=8", "data.labeled_per_class=4", "tracking.log_model=false", "engine.progress=none",
                 "stages[0].unlabeled_ratio=1", "stages[0].teacher_accuracy_images=8",
                 "models.wrn={name: small_cnn, params: {channels: [4], dropout: 0.2}}"]  # WRN-28-2 is slow on CPU
    exp = load_experiment(EXPERIMENTS / "cifar10" / "mpl_4000_labels.yaml", overrides, plugins.registry)
    [stage] = exp.stages
    assert (stage.uda.threshold, stage.uda.temperature, stage.uda.weight, stage.ema_decay) == (0.6, 0.7, 8, 0.995)
    stage.epochs, stage.batch_size, stage.finetune.epochs, stage.finetune.batch_size = 1, 8, 1, 8
    result = run_experiment(exp, plugins)["mpl"]
    assert 0 <= result.metrics["last.test.accuracy"] <= 1
