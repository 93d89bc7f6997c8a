"""A user's own checkpoint, saved the way training scripts save them: found, fitted or explained in one
located line by `mentor validate` and at the start of `mentor run`, before anything trains."""

from __future__ import annotations

import pytest
import torch

from mentor.cli import main
from mentor.state_dicts import WeightsMismatch, find_state_dict, mismatch, strip_wrapper_prefix
from mentor_plugins.models.small_cnn import small_cnn

from .test_teachers import TEACHER, by_hand, config, no_run_left_running, stage_runs, store, teacher_weights, write

# --- by hand, on names and shapes ------------------------------------------------------------------


def test_a_training_script_checkpoint_names_the_key_that_holds_the_weights():
    sd = {"conv.weight": torch.zeros(2, 1, 3, 3), "fc.weight": torch.zeros(3, 2)}
    saved = {"epoch": 12, "model_state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": []}}
    with pytest.raises(WeightsMismatch, match=r"found keys epoch, model_state_dict, optimizer_state_dict, not a "
                       r"state_dict: did you mean `checkpoint_key: model_state_dict`\?"):
        find_state_dict(saved)
    assert find_state_dict(saved, "model_state_dict") is sd
    assert find_state_dict({"state_dict": sd, "epoch": 1}) is sd  # Lightning's and mentor's own layouts
    assert find_state_dict({"model": sd, "optimizer": {}}) is sd
    with pytest.raises(WeightsMismatch, match="checkpoint_key 'ema' is not in the checkpoint"):
        find_state_dict(saved, "ema")
    with pytest.raises(WeightsMismatch, match="none of them holds weights"):
        find_state_dict({"epoch": 3, "note": "nothing"})


def test_wrapper_prefixes_are_removed_only_when_they_stand_between_the_names():
    expected = {"conv.weight", "fc.weight"}
    t = torch.zeros(1)
    assert set(strip_wrapper_prefix({"module.conv.weight": t, "module.fc.weight": t}, expected)) == expected
    assert set(strip_wrapper_prefix({"model.conv.weight": t, "model.fc.weight": t}, expected)) == expected
    assert set(strip_wrapper_prefix({"_orig_mod.conv.weight": t, "_orig_mod.fc.weight": t}, expected)) == expected
    own = {"model.conv.weight", "model.fc.weight"}  # a model whose own submodule is called `model`
    assert set(strip_wrapper_prefix({k: t for k in own}, own)) == own


def test_a_head_for_other_classes_is_said_as_such_and_anything_else_listed():
    model = small_cnn(10, 1, channels=[4]).state_dict()
    other = small_cnn(7, 1, channels=[4]).state_dict()
    assert mismatch(model, model) is None
    said = mismatch(other, model)
    assert said.startswith("it was trained for 7 classes, the model has 10 (the data's): its head ")
    wider = small_cnn(10, 1, channels=[8]).state_dict()
    said = mismatch(wider, model)
    assert "shapes differ" in said and "classes" not in said
    renamed = {f"x.{k}": v for k, v in model.items()}
    said = mismatch(renamed, model)
    assert said.startswith(f"{len(model)} of the model's keys are missing") and "are not the model's" in said
    assert mismatch(wider, model, shapes=False) is None  # names alone: what validate can compare


# --- through the CLI, files on disk ----------------------------------------------------------------


def assert_scored_as_its_weights(workdir, path, weights):
    """The file validates, runs, and its `score` stage measured the teacher these weights make."""
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path)]) == 0
    model = small_cnn(4, 1, channels=[8])
    model.load_state_dict(weights)
    scored = stage_runs(store(workdir))["score"].data.metrics
    assert scored["test/accuracy"] == pytest.approx(by_hand(model, path)["test/accuracy"], abs=1e-6)


def test_validate_points_at_the_entry_that_holds_the_weights_and_checkpoint_key_loads_it(workdir, capsys):
    weights = teacher_weights()
    torch.save({"epoch": 30, "model_state_dict": weights, "best_acc": 0.9}, workdir / "teacher.pt")
    path = write(workdir, config({**TEACHER, "checkpoint": "teacher.pt"}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "models.teacher.checkpoint" in err and "did you mean `checkpoint_key: model_state_dict`?" in err
    assert "Traceback" not in err and not (workdir / "mlruns").exists()  # nothing ran, nothing recorded

    path = write(workdir, config({**TEACHER, "checkpoint": "teacher.pt", "checkpoint_key": "model_state_dict"}))
    assert_scored_as_its_weights(workdir, path, weights)


@pytest.mark.parametrize("prefix", ["model.", "module."])  # Lightning, DDP
def test_a_lightning_or_ddp_checkpoint_is_the_same_teacher(workdir, prefix):
    weights = teacher_weights(seed=5)
    torch.save({"state_dict": {prefix + k: v for k, v in weights.items()}, "epoch": 3}, workdir / "wrapped.pt")
    path = write(workdir, config({**TEACHER, "checkpoint": "wrapped.pt"},
                                 stages=[{"name": "score", "kind": "evaluate", "model": "teacher"}]))
    assert_scored_as_its_weights(workdir, path, weights)


def test_a_checkpoint_for_other_classes_stops_the_run_before_any_stage_trains(workdir, capsys):
    torch.save(teacher_weights(classes=7), workdir / "seven.pt")
    stages = [{"name": "warmup", "kind": "train", "model": "student", "epochs": 1, "batch_size": 16},
              {"name": "student", "kind": "distill", "teacher": "teacher", "student": "student", "epochs": 1,
               "batch_size": 16}]
    path = write(workdir, config({**TEACHER, "checkpoint": "seven.pt"}, stages=stages))
    assert main(["validate", str(path)]) == 0  # names fit; the classes are the data's, known when it loads
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "models.teacher.checkpoint: weights do not fit the model: it was trained for 7 classes, the model " \
           "has 4 (the data's)" in err and "Traceback" not in err
    assert not list(workdir.rglob("final.pt"))  # the warm-up stage before the distill never trained
    assert no_run_left_running(store(workdir))


def test_another_architecture_is_refused_by_validate_with_the_keys_that_differ(workdir, capsys):
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4)).state_dict(), workdir / "mlp.pt")
    path = write(workdir, config({**TEACHER, "checkpoint": "mlp.pt"}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "models.teacher.checkpoint" in err and "of the model's keys are missing" in err
    assert "keys are not the model's (1.weight, 1.bias)" in err and "Traceback" not in err


# --- a teacher that scores near chance is said loudly, preprocessing first -------------------------


@pytest.mark.slow  # trains a teacher stage to show the warning stays off for it
def test_an_evaluated_teacher_near_chance_is_a_warning_naming_the_preprocessing(workdir, plugins, tiny_config,
                                                                               capsys):
    from mlflow import MlflowClient

    from mentor.config import validate_document
    from mentor.config.document import Document
    from mentor.pipeline import run_experiment
    from mentor.tracking.store import tracking_uri

    blind = small_cnn(4, 1, channels=[8, 8])
    with torch.no_grad():  # equal logits: argmax is class 0 for every image, 1/4 of the balanced labels
        blind.fc.weight.zero_()
        blind.fc.bias.zero_()
    torch.save(blind.state_dict(), workdir / "blind.pt")
    tiny_config["models"]["blind"] = {"name": "small_cnn", "params": {"channels": [8, 8]},
                                      "checkpoint": str(workdir / "blind.pt")}
    tiny_config["stages"] = [tiny_config["stages"][0],
                             {"name": "score_trained", "kind": "evaluate", "model": "teacher"},
                             {"name": "score_blind", "kind": "evaluate", "model": "blind"}]
    results = run_experiment(validate_document(Document("t.yaml", tiny_config), plugins.registry), plugins)
    err = capsys.readouterr().err
    assert results["score_blind"].metrics["last.val.accuracy"] == pytest.approx(0.25)
    assert "[score_blind] warning: blind scores 0.2500 on val, near chance (0.2500 for 4 classes). First " \
           "suspect: its preprocessing. It is fed 1 channel, 8x8, mean [0.3], std [0.3] (data); a model trained " \
           "with other statistics (ImageNet's) or another size scores like this: state what it was trained with " \
           "in models.blind.preprocess (image_size, channels, mean, std)." in err
    assert results["score_trained"].metrics["last.val.accuracy"] > 0.5 and "[score_trained] warning" not in err
    client = MlflowClient(tracking_uri(None))
    runs = {r.data.tags["mentor.stage"]: r for r in client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id]) if "mentor.stage" in r.data.tags}
    assert runs["score_blind"].data.tags["mentor.warning"].startswith("blind scores 0.2500 on val")
    assert "mentor.warning" not in runs["score_trained"].data.tags


def test_the_empty_state_of_a_module_without_parameters_loads():
    """The loop's checkpoint keeps each loss's state beside the model's; a parameter-free loss's is {}."""
    from mentor.engine.checkpoint import load_weights

    assert find_state_dict({}) == {}
    load_weights(torch.nn.MSELoss(), {}, "checkpoint.pt (extra losses)")
    with pytest.raises(WeightsMismatch, match="none of them holds weights"):
        find_state_dict({"epoch": 3, "optimizer_state_dict": {}})
