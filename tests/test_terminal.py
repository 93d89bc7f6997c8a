"""What `mentor run` prints: a start banner, one labelled line per epoch, an end summary with the run id."""

import re

import pytest
import yaml

from mentor.cli import main
from mentor.engine.progress import Progress

CONFIG = {
    "name": "terminal",
    "data": {"source": "random_images",
             "params": {"train_size": 96, "test_size": 32, "image_size": 8, "channels": 1, "num_classes": 4},
             "val_size": 32},
    "models": {"s": {"name": "small_cnn", "params": {"channels": [4]}}},
    "stages": [{"name": "first", "kind": "train", "model": "s", "epochs": 2, "batch_size": 32},
               {"name": "second", "kind": "train", "model": "s", "epochs": 1, "batch_size": 32}],
    "engine": {"progress": "plain"},
    "tracking": {"log_model": False},
}


@pytest.mark.slow
def test_a_run_says_what_runs_where_and_how_to_open_it(workdir, capsys):
    path = workdir / "terminal.yaml"
    path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    run_id = re.fullmatch(r"mentor: experiment 'terminal', run ([0-9a-f]{32})", out[0]).group(1)
    assert out[1] == f"  store:  sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    assert out[2] == "  data:   random_images: 64 labeled training images, 32 validation (val_size 32), 32 test"
    assert out[3] == "  stages: first (train) -> second (train)"
    epochs = [line for line in out if line.startswith("[")]
    assert [line.split("  ")[0] for line in epochs] == ["[first] epoch 1/2", "[first] epoch 2/2", "[second] epoch 1/1"]
    assert all("train/loss " in line and "val/accuracy " in line for line in epochs)
    assert out[-1] == (f"run {run_id} finished. Open it with: mentor ui --experiment terminal; "
                       "rank its stages with: mentor compare terminal")


def test_the_plain_mode_prints_each_epoch_once_and_phases_stay_off_the_log(capsys):
    progress = Progress("plain", "s", epochs=2, steps_per_epoch=3)
    progress.start_epoch(0)
    progress.advance()
    progress.phase("evaluating")
    progress.end_epoch(0, {"train/loss": 0.5, "val/accuracy": 0.25, "lr": 0.1})
    progress.close()
    [line] = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\[s\] epoch 1/2  train/loss 0\.5000  val/accuracy 0\.2500  \(\d+\.\ds\)", line)
