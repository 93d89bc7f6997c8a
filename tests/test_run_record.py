"""What a stage run records: the parameters that apply, its model's size and architecture, its config, its data."""

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mentor.cli import main
from mentor.config.schema import applicable
from mentor.tracking.store import tracking_uri
from tests.test_terminal import CONFIG


def test_only_the_options_the_chosen_optimizer_and_schedule_read_are_kept():
    config = {"stages": [{"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
                                        "weight_decay": 0.0, "betas": [0.9, 0.999]},
                          "schedule": {"name": "cosine", "warmup_epochs": 1, "milestones": [3], "gamma": 0.1,
                                       "min_lr": 0.0}},
                         {"optimizer": {"name": "adamw", "lr": 0.1, "momentum": 0.9, "nesterov": False,
                                        "weight_decay": 0.0, "betas": [0.9, 0.999]},
                          "schedule": {"name": "multistep", "warmup_epochs": 0, "milestones": [3], "gamma": 0.1,
                                       "min_lr": 0.0}}],
              "other": {"name": "sgd", "lr": 1}}  # not an optimizer block: kept whole
    kept = applicable(config)
    assert kept["stages"][0]["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
                                              "weight_decay": 0.0}
    assert kept["stages"][0]["schedule"] == {"name": "cosine", "warmup_epochs": 1, "min_lr": 0.0}
    assert kept["stages"][1]["optimizer"] == {"name": "adamw", "lr": 0.1, "weight_decay": 0.0, "betas": [0.9, 0.999]}
    assert kept["stages"][1]["schedule"] == {"name": "multistep", "warmup_epochs": 0, "milestones": [3], "gamma": 0.1}
    assert kept["other"] == {"name": "sgd", "lr": 1}


@pytest.mark.slow
def test_a_stage_run_records_its_model_config_and_training_rows(workdir, capsys):
    path = workdir / "record.yaml"
    path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name("terminal")
    [first] = client.search_runs([experiment.experiment_id], "tags.`mentor.stage` = 'first'")
    params = first.data.params
    assert not any(k.startswith(("stage.optimizer.betas", "stage.schedule.milestones", "stage.schedule.gamma"))
                   for k in params)
    assert params["stage.optimizer.momentum"] == "0.9" and params["stage.schedule.name"] == "cosine"

    from mentor.plugins import load_plugins

    model = load_plugins().registry.get("model", "small_cnn").make_model(4, 1, (8, 8), channels=[4])
    assert params["model.architecture"] == "small_cnn" and params["model.key"] == "s"
    assert int(params["model.parameters"]) == sum(p.numel() for p in model.parameters())
    architecture = client.download_artifacts(first.info.run_id, "model/architecture.txt", str(workdir))
    assert open(architecture).read().startswith(type(model).__name__)
    stage = yaml.safe_load(open(client.download_artifacts(first.info.run_id, "stage.yaml", str(workdir))))
    assert stage["name"] == "first" and stage["epochs"] == 2 and stage["optimizer"]["betas"] == [0.9, 0.999]
    [dataset] = first.inputs.dataset_inputs
    assert dataset.dataset.name == "first-train" and dataset.tags[0].value == "training"
    assert '"num_rows": 64' in dataset.dataset.profile  # 96 training images less the 32 of validation
