"""Plugins: built-ins and third-party packages load through entry points; conflicts are errors."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mentor import hookimpl
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
