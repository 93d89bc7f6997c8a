"""Mean Teacher: the ramp-up, the consistency loss and the EMA by hand, the stage end to end."""

import copy
import math
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from mentor.config import ConfigError, validate_document
from mentor.config.document import Document
from mentor.pipeline import run_experiment
from mentor.plugins import load_plugins
from mentor_plugins.mean_teacher import MeanTeacher, MeanTeacherStage
from mentor_plugins.mean_teacher_terms import consistency_loss, sigmoid_rampup, teacher_decay

from .conftest import SyntheticData


def test_sigmoid_rampup_at_a_few_points():
    for position, length in [(0, 10), (2.5, 10), (5, 10), (9, 10), (10, 10), (15, 10)]:
        t = min(position / length, 1.0)
        assert sigmoid_rampup(position, length) == pytest.approx(math.exp(-5 * (1 - t) ** 2))
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(3, 0) == 1.0


def softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


STUDENT = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
TEACHER = [[0.0, 1.0, 0.0], [0.0, 3.0, 1.0]]


def test_consistency_losses_by_hand():
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    mse = sum((a - b) ** 2 for rs, rt in zip(STUDENT, TEACHER, strict=True)
              for a, b in zip(softmax(rs), softmax(rt), strict=True)) / 6  # mean over 2 images x 3 classes
    assert float(consistency_loss(s, t, "mse")) == pytest.approx(mse)
    kl = sum(q * (math.log(q) - math.log(p)) for rs, rt in zip(STUDENT, TEACHER, strict=True)
             for p, q in zip(softmax(rs), softmax(rt), strict=True)) / 2
    assert float(consistency_loss(s, t, "kl")) == pytest.approx(kl)
    # the teacher gets no gradient
    t.requires_grad_(True)
    consistency_loss(s.requires_grad_(True), t).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_ema_update_and_decays_by_hand():
    assert teacher_decay(0, 0.999, 0.99, True) == 0.0  # step 0: the teacher becomes the student
    assert teacher_decay(4, 0.999, 0.99, True) == pytest.approx(0.8)  # 1 - 1/5 below 0.99
    assert teacher_decay(1000, 0.999, 0.99, True) == 0.99
    assert teacher_decay(1000, 0.999, 0.99, False) == 0.999
    assert teacher_decay(1000, 0.999, None, True) == 0.999

    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    teacher = copy.deepcopy(student).requires_grad_(False)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        teacher.bias.fill_(-1.0)
    stage = MeanTeacherStage(model="m", consistency_weight=2.0, ema_decay=0.9, optimizer={"lr": 0.1, "momentum": 0,
                                                                                          "weight_decay": 0})
    method = MeanTeacher(student, teacher, torch.optim.SGD(student.parameters(), lr=0.1), stage, rampup_steps=0)
    method.counter.step = 50  # decay min(1 - 1/51, 0.9) = 0.9
    old_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    x_l, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    x_u1, x_u2 = torch.randn(6, 3), torch.randn(6, 3)
    _, metrics = method.step(x_l, y, x_u1, x_u2)
    for k, v in student.state_dict().items():  # the student after its step
        assert torch.allclose(teacher.state_dict()[k], 0.9 * old_teacher[k] + 0.1 * v)
    assert float(metrics["ema_decay"]) == pytest.approx(0.9)
    assert float(metrics["consistency_weight"]) == 2.0  # no ramp-up


def test_the_loss_is_cross_entropy_plus_the_ramped_consistency():
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    teacher = nn.Linear(3, 2).requires_grad_(False)
    stage = MeanTeacherStage(model="m", consistency_weight=10.0)
    method = MeanTeacher(student, teacher, torch.optim.SGD(student.parameters(), lr=0.1), stage, rampup_steps=8)
    method.counter.step = 4
    x_l, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    x_u1, x_u2 = torch.randn(6, 3), torch.randn(6, 3)
    total, terms = method.losses(x_l, y, x_u1, x_u2)
    s, t = student(torch.cat([x_l, x_u1])), teacher(torch.cat([x_l, x_u2]))  # labeled images in it too
    ce = nn.functional.cross_entropy(s[:4], y)
    expected = ce + 10.0 * math.exp(-5 * 0.5 ** 2) * ((s.softmax(1) - t.softmax(1)) ** 2).mean()
    assert float(total) == pytest.approx(float(expected))
    assert float(terms["consistency_weight"]) == pytest.approx(10.0 * math.exp(-1.25))


def test_bad_ranges_are_refused():
    for bad in ({"consistency_weight": -1}, {"rampup_epochs": -1}, {"ema_decay": 1.0}, {"ema_decay_rampup": 0}):
        with pytest.raises(ValueError):
            MeanTeacherStage(model="m", **bad)


# --- the stage in the pipeline -------------------------------------------------------------


def mean_teacher_config(tiny_config, **stage):
    config = copy.deepcopy(tiny_config)
    config["name"] = "mean-teacher"
    config["data"] = {"source": "synthetic", "params": {"train_size": 400}, "val_size": 40, "labeled_per_class": 8}
    config["tracking"] = {"log_model": False}
    config["models"]["teacher"]["params"]["dropout"] = 0.2
    config["stages"] = [{
        "name": "mt", "kind": "mean_teacher", "model": "teacher", "epochs": 2, "batch_size": 8, "unlabeled_ratio": 2,
        "steps_per_epoch": 6, "consistency_weight": 5.0, "rampup_epochs": 1, "ema_decay": 0.9,
        "ema_decay_rampup": 0.5, "input_noise": 0.1, "keep": "last", "optimizer": {"lr": 0.2},
        "augment": {"crop_padding": 1, "flip": True}, **stage}]
    return config


@pytest.mark.parametrize("keep_model", ["teacher", "student"])
@pytest.mark.slow
def test_mean_teacher_stage_logs_its_terms_and_keeps_the_teacher(workdir, tiny_config, keep_model):
    config = mean_teacher_config(tiny_config, keep_model=keep_model)
    plugins = load_plugins(extra=[SyntheticData()])
    result = run_experiment(validate_document(Document("t", config), plugins.registry), plugins)["mt"]

    c = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    [run] = [r for r in c.search_runs([c.get_experiment_by_name("mean-teacher").experiment_id])
             if r.data.tags.get("mentor.stage") == "mt"]
    for key in ("train/loss_s", "train/loss_u", "train/consistency_weight", "train/ema_decay", "val/accuracy"):
        assert sorted(m.step for m in c.get_metric_history(run.info.run_id, key)) == [1, 2], key  # 1-based epochs
    weights = [m.value for m in c.get_metric_history(run.info.run_id, "train/consistency_weight")]
    assert weights[0] < weights[1] == pytest.approx(5.0)  # ramped over the first epoch, then constant
    [state] = [torch.load(p, weights_only=False) for p in workdir.glob("mlruns/checkpoints/*/*/mt/checkpoint.pt")]
    other = "student" if keep_model == "teacher" else "teacher"
    kept = torch.load(result.weights)
    assert all(torch.equal(kept[k], v) for k, v in state["model"].items())
    assert any(not torch.equal(kept[k], v) for k, v in state["extra"][other].items() if v.is_floating_point())
    assert 0 <= result.metrics["last.test.accuracy"] <= 1


def test_a_stage_without_unlabeled_images_is_a_located_error(workdir, tiny_config):
    config = mean_teacher_config(tiny_config)
    del config["data"]["labeled_per_class"]
    plugins = load_plugins(extra=[SyntheticData()])
    with pytest.raises(ConfigError) as err:
        run_experiment(validate_document(Document("t", config), plugins.registry), plugins)
    [problem] = err.value.problems
    assert problem.path == "data.labeled_per_class" and "needs unlabeled images" in problem.message


@pytest.mark.slow
def test_a_bad_range_is_located_and_the_cli_exits_2(write_yaml, tiny_config):
    config = mean_teacher_config(tiny_config, consistency_weight=-1)
    config["data"]["source"] = "fashion_mnist"
    found = subprocess.run([sys.executable, "-m", "mentor.cli", "validate", str(write_yaml(config))],
                           capture_output=True, text=True)
    assert found.returncode == 2 and "stages[0].consistency_weight" in found.stderr
    assert "Traceback" not in found.stderr


def test_the_cifar10_recipe_validates_with_its_settings(plugins):
    from pathlib import Path

    from mentor.config import load_experiment

    path = Path(__file__).parents[1] / "experiments" / "cifar10" / "mean_teacher_4000_labels.yaml"
    [stage] = load_experiment(path, [], plugins.registry).stages
    assert (stage.consistency, stage.consistency_weight, stage.ema_decay, stage.ema_decay_rampup) == (
        "mse", 100, 0.999, 0.99)
    assert stage.epochs * stage.steps_per_epoch == 150_000 and stage.rampup_epochs * stage.steps_per_epoch == 40_000


@pytest.mark.slow
def test_an_interrupted_stage_resumes_to_the_same_result(workdir, tiny_config):
    from .test_mpl import StopAfter

    config = mean_teacher_config(tiny_config, steps_per_epoch=4)
    plugins = load_plugins(extra=[SyntheticData()])
    reference = run_experiment(validate_document(Document("t", config), plugins.registry), plugins)["mt"]
    config["name"] = "mean-teacher-resumed"
    stopping = load_plugins(extra=[SyntheticData(), StopAfter("mt", 1)])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(validate_document(Document("t", config), stopping.registry), stopping)
    resumed = run_experiment(validate_document(Document("t", config), plugins.registry), plugins, resume=True)["mt"]
    assert resumed.metrics == reference.metrics
    strip = [{k: v for k, v in e.items() if k != "throughput"} for e in resumed.history]
    assert strip == [{k: v for k, v in e.items() if k != "throughput"} for e in reference.history]
