"""Plugins: built-ins and third-party packages load through entry points; conflicts are errors."""

import copy
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mentor import Params, hookimpl
from mentor.plugins import PluginError, load_plugins
from mentor.registry import PluginConflict, UnknownComponent

PACKAGES = Path(__file__).parent / "packages"


def test_builtins_come_from_entry_points():
    plugins = load_plugins()
    reg = plugins.registry
    assert {"train", "distill"} <= set(reg.names("method"))
    assert {"cross_entropy", "kd"} <= set(reg.names("loss"))
    assert {"fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "image_folder"} <= set(
        reg.names("data_source")
    )
    kd = reg.get("loss", "kd")
    assert kd.package == "mentor" and kd.plugin == "mentor_plugins.losses"
    assert "temperature" in kd.params.model_fields


def test_built_ins_are_not_loaded_without_entry_points():
    assert load_plugins(entry_points=False).registry.all() == []


def test_same_name_from_two_plugins_names_both():
    class A:
        @hookimpl
        def register_losses(self, register):
            register("mine", object)

    class B:
        @hookimpl
        def register_losses(self, register):
            register("mine", object)

    with pytest.raises(PluginConflict) as err:
        load_plugins(extra=[A(), B()], entry_points=False)
    assert "loss 'mine' is registered twice" in str(err.value)
    assert str(err.value).count("<in-process>") == 2


def test_unknown_component_suggests_a_name():
    with pytest.raises(UnknownComponent, match="did you mean 'kd'"):
        load_plugins().registry.get("loss", "kdd")


def test_misspelled_hook_is_reported():
    class Typo:
        @hookimpl
        def register_model(self, register):  # missing 's'
            pass

    with pytest.raises(PluginError, match="register_model"):
        load_plugins(extra=[Typo()], entry_points=False)


def _install(name: str, target: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(PACKAGES / name)],
        check=True, capture_output=True,
    )


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh install target on sys.path, as if the package were pip-installed."""
    target = tmp_path / "site"
    monkeypatch.syspath_prepend(str(target))
    yield target
    for mod in ("mentor_hello", "mentor_clash"):
        sys.modules.pop(mod, None)
    importlib.invalidate_caches()


@pytest.mark.slow
def test_third_party_package_is_found_through_its_entry_point(site):
    _install("mentor-hello", site)
    importlib.invalidate_caches()
    plugins = load_plugins()
    model = plugins.registry.get("model", "hello_mlp")
    assert model.package == "mentor-hello"
    assert model.plugin == "mentor_hello"
    assert plugins.registry.get("loss", "hello_zero").description == "always zero"
    assert plugins.packages["mentor_hello"] == "mentor-hello"
    # and it appears in `mentor plugins --json`, run as a user would
    out = subprocess.run(
        [sys.executable, "-m", "mentor.cli", "plugins", "--json"], capture_output=True, text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(site)}, check=True,
    )
    rows = {(r["kind"], r["name"]): r for r in json.loads(out.stdout)}
    assert rows[("model", "hello_mlp")]["package"] == "mentor-hello"
    assert rows[("model", "hello_mlp")]["params"]["hidden"]["default"] == 32


@pytest.mark.slow
def test_third_party_name_clash_is_an_error_naming_both_packages(site):
    _install("mentor-clash", site)
    importlib.invalidate_caches()
    with pytest.raises(PluginConflict) as err:
        load_plugins()
    message = str(err.value)
    assert "loss 'kd'" in message and "'mentor'" in message and "'mentor-clash'" in message
    result = subprocess.run(
        [sys.executable, "-m", "mentor.cli", "plugins"], capture_output=True, text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(site)},
    )
    assert result.returncode == 2
    assert "mentor-clash" in result.stderr and "Traceback" not in result.stderr


# --- a plugin written against the previous documented API keeps working --------------------------


class OldMLPParams(Params):
    hidden: int = 16
    image_size: int = 28  # the documented way before mentor passed the input's size to the factory


def old_mlp(num_classes, in_channels, hidden=16, image_size=28):
    """An MLP sized by its own image_size parameter (an int: a square image)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


class OldModelPlugin:
    @hookimpl
    def register_models(self, register):
        register("old_mlp", old_mlp, params=OldMLPParams)


def test_a_model_whose_params_declare_image_size_validates_and_trains_with_one_deprecation_warning(workdir):
    """It was a TypeError ('make_model() got multiple values for argument image_size') in validate itself."""
    from mentor.config import validate_document
    from mentor.config.document import Document
    from mentor.pipeline import run_experiment
    from mentor.registry import MentorDeprecationWarning

    from .conftest import TINY, SyntheticData

    with pytest.warns(MentorDeprecationWarning) as caught:
        plugins = load_plugins(extra=[SyntheticData(), OldModelPlugin()])
    [warning] = [w for w in caught if issubclass(w.category, MentorDeprecationWarning)]
    assert "model 'old_mlp'" in str(warning.message) and "remove image_size from the params model" in str(
        warning.message)
    config = copy.deepcopy(TINY)
    config["models"]["student"] = {"name": "old_mlp", "params": {"image_size": 8, "hidden": 12}}
    config["tracking"]["log_model"] = False
    experiment = validate_document(Document("old.yaml", config), plugins.registry)
    results = run_experiment(experiment, plugins)
    assert 0 <= results["student"].metrics["last.test.accuracy"] <= 1
    weights = torch.load(results["student"].weights, weights_only=True)
    assert tuple(weights["1.weight"].shape) == (12, 1 * 8 * 8)  # built from the file's image_size


def test_a_model_factory_that_takes_image_size_without_declaring_it_gets_the_input_size(plugins):
    model = plugins.registry.get("model", "small_cnn")
    taker = type(model)(model.kind, "sized", lambda num_classes, in_channels, image_size: image_size,
                        model.params, "", "test", "test")
    assert taker.make_model(4, 1, (8, 6)) == (8, 6)
    assert taker.make_model(4, 1, (8, 6), image_size=(3, 3)) == (3, 3)  # the file's value wins
