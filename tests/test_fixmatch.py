"""FixMatch and FlexMatch: the mask, labels and loss by hand, the thresholds by hand, the stage end to end."""

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from mentor.config import ConfigError, validate_document
from mentor.config.document import Document
from mentor.pipeline import run_experiment
from mentor.plugins import load_plugins
from mentor_plugins.fixmatch import FixMatch, _schedule
from mentor_plugins.fixmatch_config import FixMatchStage
from mentor_plugins.fixmatch_terms import PredictionMemory, flexmatch_thresholds

from .conftest import SyntheticData

FASHION = Path(os.environ.get("MENTOR_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def ce(logits, label):
    """Cross-entropy of one row of logits, written out."""
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


def softmax(logits):
    exps = [math.exp(v) for v in logits]
    return [e / sum(exps) for e in exps]


WEAK = [[4.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 5.0], [0.2, 0.1, 0.0]]
STRONG = [[1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.5, 0.0, 1.5], [2.0, 0.0, 0.0]]
LABELED = [[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]]
Y = [0, 1]


def identity_fixmatch(**options):
    """FixMatch over a 'model' that returns its input: the batches are the logits."""
    stage = FixMatchStage(model="m", **options)
    model = nn.Identity()
    return FixMatch(model, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), stage)


def test_mask_labels_and_unlabeled_loss_by_hand():
    method = identity_fixmatch(threshold=0.9, lambda_u=2.0)
    total, terms = method.losses(torch.tensor(LABELED), torch.tensor(Y), torch.tensor(WEAK), torch.tensor(STRONG))
    confidence = [max(softmax(row)) for row in WEAK]
    labels = [row.index(max(row)) for row in WEAK]
    mask = [1.0 if c >= 0.9 else 0.0 for c in confidence]
    assert mask == [1.0, 0.0, 1.0, 0.0] and labels == [0, 0, 2, 0]
    loss_u = sum(m * ce(s, y) for m, s, y in zip(mask, STRONG, labels, strict=True)) / len(WEAK)  # all 4 images
    loss_s = sum(ce(x, y) for x, y in zip(LABELED, Y, strict=True)) / len(Y)
    assert terms["mask"].tolist() == mask
    assert terms["labels"].tolist() == labels
    assert terms["confidence"].tolist() == pytest.approx(confidence)
    assert float(terms["loss_u"]) == pytest.approx(loss_u)
    assert float(terms["loss_s"]) == pytest.approx(loss_s)
    assert float(total) == pytest.approx(loss_s + 2.0 * loss_u)


def test_soft_labels_by_hand():
    method = identity_fixmatch(threshold=0.9, hard_labels=False, temperature=0.5)
    _, terms = method.losses(torch.tensor(LABELED), torch.tensor(Y), torch.tensor(WEAK), torch.tensor(STRONG))
    expected = 0.0
    for w, s in zip(WEAK, STRONG, strict=True):
        if max(softmax(w)) >= 0.9:  # the mask from the plain softmax
            target = softmax([v / 0.5 for v in w])
            log_p = [v - math.log(sum(math.exp(u) for u in s)) for v in s]
            expected -= sum(t * lp for t, lp in zip(target, log_p, strict=True))
    assert float(terms["loss_u"]) == pytest.approx(expected / len(WEAK))


def test_flexmatch_thresholds_by_hand():
    memory = torch.tensor([-1] * 5 + [0, 0, 0, 1, 2, 2])  # sigma = [3, 1, 2, 0], 5 unused
    tau = 0.95

    def m(x):
        return x / (2 - x)

    warm = flexmatch_thresholds(memory, 4, tau, warmup=True)  # normaliser max(3, 5) = 5
    assert warm.tolist() == pytest.approx([m(3 / 5) * tau, m(1 / 5) * tau, m(2 / 5) * tau, 0.0])
    plain = flexmatch_thresholds(memory, 4, tau, warmup=False)  # normaliser max_c sigma_c = 3
    assert plain.tolist() == pytest.approx([tau, m(1 / 3) * tau, m(2 / 3) * tau, 0.0])
    assert flexmatch_thresholds(torch.full((4,), -1), 3, tau).tolist() == [0.0, 0.0, 0.0]


def test_flexmatch_memory_records_confident_predictions_and_sets_the_mask():
    memory = PredictionMemory(6, 3, threshold=0.9, warmup=True)
    memory.update(torch.tensor([4, 1, 2]), torch.tensor([2, 0, 1]), torch.tensor([0.95, 0.5, 0.9]))
    assert memory.labels.tolist() == [-1, -1, 1, -1, 2, -1]  # row 1 is below tau: not counted

    method = identity_fixmatch(threshold=0.9, flexmatch=True)
    method.memory = PredictionMemory(8, 3, 0.9, True)
    method.memory.labels = torch.tensor([0, 0, 0, 0, 2, -1, -1, -1])  # sigma [4, 0, 1], 3 unused
    thresholds = [x / (2 - x) * 0.9 for x in (4 / 4, 0.0, 1 / 4)]
    _, terms = method.losses(torch.tensor(LABELED), torch.tensor(Y), torch.tensor(WEAK), torch.tensor(STRONG),
                             rows=torch.tensor([5, 6, 7, 0]))
    assert terms["threshold"].tolist() == pytest.approx(thresholds)
    expected = [1.0 if max(softmax(w)) >= thresholds[w.index(max(w))] else 0.0 for w in WEAK]
    assert terms["mask"].tolist() == expected == [1.0, 0.0, 1.0, 0.0]
    # the memory then takes the predictions confident against tau (rows 5 and 7), after the thresholds
    assert method.memory.labels.tolist() == [0, 0, 0, 0, 2, 0, -1, 2]


def test_the_fixmatch_cosine_decay():
    stage = FixMatchStage(model="m", epochs=4, optimizer={"lr": 0.03}, schedule={"warmup_epochs": 1})
    schedule = _schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.03), stage, 10)
    factors = [schedule.lr_lambdas[0](k) for k in range(41)]
    assert factors[:10] == pytest.approx([k / 10 for k in range(10)])  # the warm-up
    after = [math.cos(7 * math.pi * k / (16 * 30)) for k in range(31)]  # K = 30 steps after it
    assert factors[10:] == pytest.approx(after)
    assert factors[-1] == pytest.approx(math.cos(7 * math.pi / 16))


def test_threshold_must_be_in_zero_one():
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError):
            FixMatchStage(model="m", threshold=bad)
    assert FixMatchStage(model="m", threshold=1.0).threshold == 1.0


# --- the stage in the pipeline -------------------------------------------------------------


def fixmatch_config(tiny_config, **stage):
    config = copy.deepcopy(tiny_config)
    config["name"] = "fixmatch"
    config["data"] = {"source": "synthetic", "params": {"train_size": 400}, "val_size": 40, "labeled_per_class": 8}
    config["tracking"] = {"log_model": False}
    config["stages"] = [{
        "name": "fm", "kind": "fixmatch", "model": "teacher", "epochs": 2, "batch_size": 8, "unlabeled_ratio": 2,
        "threshold": 0.4, "ema_decay": 0.9, "steps_per_epoch": 8, "keep": "last", "optimizer": {"lr": 0.2},
        "lr_decay": "schedule", "schedule": {"name": "constant"},
        "strong_augment": {"magnitude": 9}, "augment": {"crop_padding": 1, "flip": True}, **stage}]
    return config


@pytest.mark.parametrize("flexmatch", [False, True])
@pytest.mark.slow
def test_fixmatch_stage_logs_its_metrics_and_keeps_the_ema(workdir, tiny_config, flexmatch):
    config = fixmatch_config(tiny_config, flexmatch=flexmatch)
    plugins = load_plugins(extra=[SyntheticData()])
    result = run_experiment(validate_document(Document("t", config), plugins.registry), plugins)["fm"]

    c = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    [run] = [r for r in c.search_runs([c.get_experiment_by_name("fixmatch").experiment_id])
             if r.data.tags.get("mentor.stage") == "fm"]
    for key in ("train/loss_s", "train/loss_u", "fixmatch/mask_rate", "fixmatch/pseudo_label_accuracy_all"):
        history = c.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key  # 1-based epochs
    assert all(0 <= m.value <= 1 for m in c.get_metric_history(run.info.run_id, "fixmatch/mask_rate"))
    accuracy = c.get_metric_history(run.info.run_id, "fixmatch/pseudo_label_accuracy")
    assert accuracy and all(0 <= m.value <= 1 for m in accuracy)
    if flexmatch:
        assert "train/flexmatch/threshold" in run.data.metrics
    # the kept weights are the EMA's (the loop's model), not the trained model's (an extra)
    [state] = [torch.load(p, weights_only=False) for p in workdir.glob("mlruns/checkpoints/*/*/fm/checkpoint.pt")]
    kept = torch.load(result.weights)
    assert all(torch.equal(kept[k], v) for k, v in state["model"].items())
    assert any(not torch.equal(kept[k], v) for k, v in state["extra"]["model"].items() if v.is_floating_point())
    assert 0 <= result.metrics["last.test.accuracy"] <= 1


def test_a_stage_without_unlabeled_images_is_a_located_error(workdir, tiny_config):
    config = fixmatch_config(tiny_config)
    del config["data"]["labeled_per_class"]
    plugins = load_plugins(extra=[SyntheticData()])
    with pytest.raises(ConfigError) as err:
        run_experiment(validate_document(Document("t", config), plugins.registry), plugins)
    [problem] = err.value.problems
    assert problem.path == "data.labeled_per_class" and "needs unlabeled images" in problem.message


@pytest.mark.slow
def test_a_bad_threshold_is_located_and_the_cli_exits_2(tmp_path, write_yaml, tiny_config, plugins):
    config = fixmatch_config(tiny_config, threshold=1.5)
    config["data"].update(source="fashion_mnist", params={})  # a source the file only names: nothing is loaded
    path = write_yaml(config)
    from mentor.config import load_experiment

    with pytest.raises(ConfigError) as err:
        load_experiment(path, [], plugins.registry)
    [problem] = err.value.problems
    assert problem.path == "stages[0].threshold" and problem.line is not None
    found = subprocess.run([sys.executable, "-m", "mentor.cli", "validate", str(path)], capture_output=True,
                           text=True)
    assert found.returncode == 2 and "stages[0].threshold" in found.stderr and "Traceback" not in found.stderr


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent")
@pytest.mark.slow
def test_the_cli_exits_2_on_a_run_without_unlabeled_images(workdir, write_yaml, tiny_config):
    config = fixmatch_config(tiny_config)
    config["data"] = {"source": "fashion_mnist", "val_size": 100}  # no labeled_per_class: nothing unlabeled
    found = subprocess.run([sys.executable, "-m", "mentor.cli", "run", str(write_yaml(config))], cwd=workdir,
                           capture_output=True, text=True, env={**os.environ, "MENTOR_FASHION_MNIST_DIR": str(FASHION)})
    assert found.returncode == 2, found.stderr
    assert "data.labeled_per_class" in found.stderr and "Traceback" not in found.stderr


@pytest.mark.parametrize("labels", [4000, 250])
def test_the_cifar10_recipes_carry_the_published_settings(plugins, labels):
    from mentor.config import load_experiment

    path = Path(__file__).parents[1] / "experiments" / "cifar10" / f"fixmatch_{labels}_labels.yaml"
    exp = load_experiment(path, [], plugins.registry)
    [stage] = exp.stages
    assert exp.data.labeled_per_class * 10 == labels and exp.models["wrn"].name == "wrn_28_2"
    assert stage.epochs * stage.steps_per_epoch == 2**20
    assert (stage.batch_size, stage.unlabeled_ratio, stage.threshold, stage.lambda_u, stage.ema_decay) == (
        64, 7, 0.95, 1, 0.999)
    sgd = stage.optimizer
    assert (sgd.name, sgd.lr, sgd.momentum, sgd.nesterov, sgd.weight_decay) == ("sgd", 0.03, 0.9, True, 5e-4)
    assert stage.lr_decay == "fixmatch_cosine" and stage.hard_labels and not stage.flexmatch


@pytest.mark.slow
def test_an_interrupted_flexmatch_stage_resumes_to_the_same_result(workdir, tiny_config):
    """The memory, optimizer, schedule and EMA are in the epoch's checkpoint: a resumed run equals a straight one."""
    from .test_mpl import StopAfter

    config = fixmatch_config(tiny_config, flexmatch=True, steps_per_epoch=4)
    plugins = load_plugins(extra=[SyntheticData()])
    reference = run_experiment(validate_document(Document("t", config), plugins.registry), plugins)["fm"]
    config["name"] = "fixmatch-resumed"
    stopping = load_plugins(extra=[SyntheticData(), StopAfter("fm", 1)])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(validate_document(Document("t", config), stopping.registry), stopping)
    resumed = run_experiment(validate_document(Document("t", config), plugins.registry), plugins, resume=True)["fm"]
    assert resumed.metrics == reference.metrics
    strip = [{k: v for k, v in e.items() if k != "throughput"} for e in resumed.history]
    assert strip == [{k: v for k, v in e.items() if k != "throughput"} for e in reference.history]
