"""Features by node name, hint regressors, two-stage FitNets, `mentor layers`, the recipes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mentor.config import load_experiment, validate_document
from mentor.config.document import Document
from mentor.features import FeatureError, FeatureTap, probe
from mentor.pipeline import run_experiment
from mentor.plugins import default_plugins

ROOT = Path(__file__).parents[1]


def build(name, classes=10, channels=3, **params):
    component = default_plugins().registry.get("model", name)
    return component.factory(classes, channels, **component.params.model_validate(params).model_dump())


@pytest.mark.parametrize(
    ("model", "node", "shape"),
    [
        ("resnet8x4", "layer2", (128, 16, 16)),
        ("resnet32x4", "layer3", (256, 8, 8)),
        ("wrn_16_2", "layer2", (64, 16, 16)),
        ("vgg8", "layer2", (128, 16, 16)),
        ("resnet20", "fc", (10,)),
    ],
)
@pytest.mark.slow
def test_layers_lists_nodes_with_shapes(model, node, shape):
    result = subprocess.run([sys.executable, "-m", "mentor.cli", "layers", model, "--json"],
                            capture_output=True, text=True, check=True)
    shapes = json.loads(result.stdout)
    assert "x" not in shapes
    if node in shapes:
        assert tuple(shapes[node]) == shape
    else:  # a stage name resolves to its last node
        assert tuple(probe(build(model), torch.zeros(2, 3, 32, 32), [node])[node][1:]) == shape


def test_tap_shares_parameters_and_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = build("resnet8x4")
    keys = set(model.state_dict())
    tap = FeatureTap(model, ["layer1", "layer3.0.add"])
    x = torch.randn(4, 3, 32, 32)
    logits, features = tap(x)
    assert set(features) == {"layer1", "layer3.0.add"}
    assert torch.allclose(logits, model(x), atol=1e-5)
    before = model.fc.weight.detach().clone()
    features["layer3.0.add"].sum().backward()
    assert model.layer1[0].conv1.weight.grad is not None  # gradients reach the model's own parameters
    assert model.fc.weight.grad is None  # fc is after the tapped node
    assert set(model.state_dict()) == keys and torch.equal(model.fc.weight, before)


def test_untraceable_models_fall_back_to_hooks_on_modules():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = self.body(x)
            if h.mean() > 1e9:  # data-dependent control flow: FX cannot trace this
                h = h * 2
            return self.fc(h.mean((2, 3)))

    model = Branchy()
    tap = FeatureTap(model, ["body"])
    logits, features = tap(torch.randn(2, 1, 5, 5))
    assert features["body"].shape == (2, 4, 5, 5) and logits.shape == (2, 2)
    # the hooks live for the tap's own call only: the model as it ships (exported, timed by the report) runs
    # bare, and a forward of the model alone does not fill the tap (issue 28: a distilled student timed slow)
    assert all(not m._forward_hooks for m in model.modules())
    model(torch.randn(2, 1, 5, 5))
    assert tap._captured == {}
    with pytest.raises(FeatureError, match="unknown model node .body.add.; did you mean .body."):
        FeatureTap(model, ["body.add"])


def test_unknown_node_is_a_located_config_error(tmp_path, tiny_config, write_yaml, plugins):
    from mentor.config import ConfigError

    tiny_config["stages"][1]["losses"].append(
        {"name": "hint", "params": {"student_node": "features.blok1", "teacher_node": "features.block1"}})
    with pytest.raises(ConfigError) as err:
        load_experiment(write_yaml(tiny_config), registry=plugins.registry)
    [problem] = err.value.problems
    assert problem.path == "stages[1].losses[2].params"
    assert "did you mean 'features.block1'" in problem.message


@pytest.mark.slow
def test_two_stage_fitnets_hands_the_hint_student_to_stage_two(workdir, plugins, tiny_config):
    hint = {"name": "hint", "params": {"student_node": "features.block1", "teacher_node": "features.block2"}}
    tiny_config["stages"][1:] = [
        {"name": "hint", "kind": "distill", "teacher": "teacher", "student": "student", "epochs": 2,
         "batch_size": 32, "losses": [hint]},
        {"name": "kd", "kind": "distill", "teacher": "teacher", "student": "student", "init": "hint",
         "epochs": 1, "batch_size": 32, "optimizer": {"lr": 1e-12, "weight_decay": 0, "momentum": 0},
         "losses": [{"name": "kd"}]},
    ]
    tiny_config["tracking"]["log_model"] = False
    exp = validate_document(Document("t", tiny_config), plugins.registry)
    results = run_experiment(exp, plugins)
    torch.manual_seed(0)
    component = plugins.registry.get("model", "small_cnn")
    fresh = component.factory(4, 1, **exp.models["student"].params)
    hinted = torch.load(results["hint"].weights, weights_only=True)
    distilled = torch.load(results["kd"].weights, weights_only=True)
    # the regressor trains with the student but is not part of it
    assert set(hinted) == set(fresh.state_dict()) == set(distilled)
    state = torch.load(Path(results["hint"].weights).with_name("checkpoint.pt"), weights_only=True)
    assert any("regressor" in key or "weight" in key for key in state["extra"]["losses"])
    # stage 1 trained the student up to its guided layer only
    conv = "features.block1.conv.weight"
    assert not torch.equal(hinted[conv], fresh.state_dict()[conv])
    assert torch.equal(hinted["fc.weight"], fresh.state_dict()["fc.weight"])
    # stage 2 started from stage 1's weights (its learning rate is ~0)
    assert torch.allclose(distilled[conv], hinted[conv], atol=1e-6)


@pytest.mark.parametrize("recipe", sorted((ROOT / "experiments" / "cifar100").glob("*.yaml")), ids=lambda p: p.stem)
@pytest.mark.slow
def test_cifar100_recipes_run_at_tiny_size(recipe, workdir, plugins):
    """The published recipes' files, on 32x32x3 synthetic data for one short epoch per stage."""
    overrides = ["data.source=synthetic", "data.params={channels: 3, size: 32, train_size: 64, test_size: 16}",
                 "data.val_size=16", "tracking.log_model=false", "engine.progress=none"]
    exp = load_experiment(recipe, overrides, plugins.registry)
    for stage in exp.stages:
        stage.epochs, stage.batch_size, stage.schedule.milestones = 1, 16, []
        for spec in getattr(stage, "losses", []):
            if spec.name == "crd":  # 16384 negatives need more than the 48 tiny training images
                spec.params["nce_k"] = 8
    results = run_experiment(exp, plugins)
    assert set(results) == {"teacher", "student", "kd", "fitnet", "at", "dkd", "kd_ls", "dist", "crd"}
    for result in results.values():
        assert 0 <= result.metrics["last.test.accuracy"] <= 1
        assert result.history[0]["train/loss"] == result.history[0]["train/loss"]  # not NaN
