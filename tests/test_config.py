"""Experiment files: validation, located errors, overrides, TOML, safety, schema."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mentor.config import ConfigError, load_experiment
from mentor.config.jsonschema import experiment_schema

ROOT = Path(__file__).parents[1]

BAD = """\
name: bad
data: {source: synthetic, val_size: 10}
models:
  teacher: {name: small_cnn, params: {dropout: 2}}
  student: {name: small_cnn}
stages:
  - {kind: train, model: teacher}
  - kind: distill
    teacher: teachr
    student: student
    losses:
      - {name: kd, params: {temperature: 0}}
      - {name: kdd}
"""


def problems(path, registry, overrides=()):
    with pytest.raises(ConfigError) as err:
        load_experiment(path, overrides, registry)
    return {p.path: p for p in err.value.problems}


def test_valid_file_resolves_defaults_and_names(write_yaml, tiny_config, plugins):
    exp = load_experiment(write_yaml(tiny_config), registry=plugins.registry)
    assert [s.name for s in exp.stages] == ["teacher", "student"]
    assert exp.stages[1].losses[1].params == {"temperature": 2.0, "standardize": False}
    # params models fill in their defaults so the logged config is complete
    assert exp.models["student"].params["dropout"] == 0.0


def test_errors_name_file_line_and_dotted_location(tmp_path, plugins):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    found = problems(path, plugins.registry)
    temp = found["stages[1].losses[0].params.temperature"]
    assert (temp.source, temp.line) == (str(path), 12)
    assert "greater than 0" in temp.message
    assert found["models.teacher.params.dropout"].line == 4
    assert "did you mean 'kd'" in found["stages[1].losses[1].name"].message
    assert found["stages[1].losses[1].name"].line == 13
    assert "unknown earlier stage 'teachr'" in found["stages[1].teacher"].message
    assert str(temp).startswith(f"{path}:12:")


def test_unknown_stage_kind_and_field_get_did_you_mean(write_yaml, tiny_config, plugins):
    tiny_config["stages"][1]["kind"] = "distil"
    tiny_config["stages"][0]["epoch"] = 3
    found = problems(write_yaml(tiny_config), plugins.registry)
    assert "did you mean 'distill'" in found["stages[1].kind"].message
    assert "did you mean 'epochs'" in found["stages[0].epoch"].message


def test_a_misspelled_plugin_parameter_gets_did_you_mean(write_yaml, tiny_config, plugins):
    tiny_config["stages"][1]["losses"][1]["params"] = {"temprature": 2}
    tiny_config["models"]["student"]["params"] = {"channel": [4]}
    found = problems(write_yaml(tiny_config), plugins.registry)
    assert found["stages[1].losses[1].params.temprature"].message.startswith(
        "unknown parameter 'temprature'; did you mean 'temperature'?")
    assert "did you mean 'channels'" in found["models.student.params.channel"].message


def test_every_error_of_a_file_is_reported_at_once_in_file_order(write_yaml, tiny_config, plugins):
    # a schema error (pass 1) and plugin-parameter errors elsewhere (pass 2) in one file
    tiny_config["models"]["student"]["params"] = {"channel": [4]}
    tiny_config["stages"][0]["epoch"] = 3
    tiny_config["stages"][1]["losses"][1]["params"] = {"temperature": -1}
    path = write_yaml(tiny_config)
    with pytest.raises(ConfigError) as err:
        load_experiment(path, registry=plugins.registry)
    found = [(p.path, p.line) for p in err.value.problems]
    assert [p for p, _ in found] == [
        "models.student.params.channel", "stages[0].epoch", "stages[1].losses[1].params.temperature"]
    assert [line for _, line in found] == sorted(line for _, line in found)


def test_references_must_point_backwards(write_yaml, tiny_config, plugins):
    tiny_config["stages"].reverse()
    found = problems(write_yaml(tiny_config), plugins.registry)
    assert "unknown earlier stage 'teacher'" in found["stages[0].teacher"].message


def test_duplicate_stage_names(write_yaml, tiny_config, plugins):
    tiny_config["stages"][1]["name"] = "teacher"
    found = problems(write_yaml(tiny_config), plugins.registry)
    assert "already used by stages[0]" in found["stages[1].name"].message


def test_set_overrides_any_field_and_errors_point_at_the_flag(write_yaml, tiny_config, plugins):
    path = write_yaml(tiny_config)
    exp = load_experiment(path, ["stages[1].epochs=7", "stages.1.losses.1.params.temperature=8",
                                 "data.val_size=0"], plugins.registry)
    assert exp.stages[1].epochs == 7
    assert exp.stages[1].losses[1].params["temperature"] == 8.0
    assert exp.data.val_size == 0
    found = problems(path, plugins.registry, ["stages[0].epochs=zero"])
    assert found["stages[0].epochs"].source == "--set"
    found = problems(path, plugins.registry, ["stages[5].epochs=1"])
    assert "out of range" in next(iter(found.values())).message


def test_toml_files_validate_the_same_way(tmp_path, plugins):
    path = tmp_path / "exp.toml"
    path.write_text(
        'name = "t"\n[data]\nsource = "synthetic"\n[models.m]\nname = "small_cnn"\n'
        '[[stages]]\nkind = "train"\nmodel = "m"\nepochs = 0\n'
    )
    found = problems(path, plugins.registry)
    assert "greater than or equal to 1" in found["stages[0].epochs"].message
    path.write_text(path.read_text().replace("epochs = 0", "epochs = 2"))
    assert load_experiment(path, registry=plugins.registry).stages[0].epochs == 2


def test_toml_errors_are_located_like_yaml(tmp_path, plugins):
    path = tmp_path / "exp.toml"
    path.write_text(
        'name = "t"\n'                                     # 1
        '[data]\nsource = "synthetic"\n'                   # 2-3
        '[models.m]\nname = "small_cnn"\n'                 # 4-5
        '[[stages]]\nkind = "train"\nmodel = "m"\n'        # 6-8
        '[[stages]]\nkind = "train"\nmodel = "mm"\n'       # 9-11
        '  optimizer = {lr = -1.0}\n'                      # 12
        '[stages.augment]\ncrop_padding = -2\n'            # 13-14
    )
    found = problems(path, plugins.registry)
    assert (found["stages[1].optimizer.lr"].line, found["stages[1].optimizer.lr"].column) == (12, 3)
    assert found["stages[1].augment.crop_padding"].line == 14
    path.write_text('name = "t"\n[data]\nsource = = 1\n')
    [problem] = problems(path, plugins.registry).values()
    assert (problem.line, problem.column) == (3, 10) and problem.message.startswith("invalid TOML: ")
    assert "(at line" not in problem.message


def test_loading_never_executes_code(tmp_path, plugins):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    found = problems(path, plugins.registry)
    assert "could not determine a constructor" in found[""].message
    assert not marker.exists()


def test_schema_includes_every_plugin_params(plugins):
    schema = experiment_schema(plugins.registry)
    text = json.dumps(schema)
    branches = {b["properties"]["name"]["const"]: b for b in schema["$defs"]["LossSpec"]["oneOf"]}
    assert branches["kd"]["properties"]["params"]["properties"]["temperature"]["exclusiveMinimum"] == 0
    sources = {b["properties"]["source"]["const"] for b in schema["$defs"]["DataConfig"]["oneOf"]}
    assert {"synthetic", "fashion_mnist"} <= sources
    assert '"distill"' in text and '"train"' in text


@pytest.mark.slow
def test_cli_validate_exit_codes_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD.replace("synthetic", "fashion_mnist"))
    bad = subprocess.run([sys.executable, "-m", "mentor.cli", "validate", str(path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert f"{path}:12:" in bad.stderr
    good = subprocess.run([sys.executable, "-m", "mentor.cli", "validate",
                           str(ROOT / "experiments" / "quickstart.yaml")], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_experiment_file_validates(path, plugins, tmp_path):
    """A recipe in the repository that no longer validates is a broken promise to its users.

    A recipe whose teacher comes from a checkpoint the user makes first (see its header)
    gets a state_dict of that architecture in its place, made here.
    """
    import yaml

    from mentor.config.schema import ModelSpec

    overrides = []
    for key, spec in (yaml.safe_load(path.read_text()).get("models") or {}).items():
        if "checkpoint" in spec and not (path.parent / spec["checkpoint"]).is_file():
            model = plugins.registry.get("model", spec["name"]).factory(10, 1, **ModelSpec(**spec).params)
            state = model.state_dict()
            torch.save({spec["checkpoint_key"]: state} if spec.get("checkpoint_key") else state, tmp_path / f"{key}.pt")
            overrides.append(f"models.{key}.checkpoint={tmp_path / f'{key}.pt'}")
    data = yaml.safe_load(path.read_text()).get("data") or {}
    root = (data.get("params") or {}).get("root")
    if data.get("source") == "image_folder" and not (path.parent / root).exists():  # the user's own photos
        (tmp_path / "photos").mkdir()
        overrides.append(f"data.params.root={tmp_path / 'photos'}")
    unlabeled = data.get("unlabeled")
    if unlabeled and not (path.parent / unlabeled["params"]["path"]).exists():  # a folder the header makes
        (tmp_path / "pool").mkdir()
        overrides.append(f"data.unlabeled.params.path={tmp_path / 'pool'}")
    experiment = load_experiment(path, overrides, plugins.registry)
    assert experiment.stages, f"{path} has no stages"
