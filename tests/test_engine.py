"""The loop's pieces: schedules against hand values, best-epoch selection, checkpoints."""

import math

import pytest
import torch

from mentor.config.schema import ScheduleConfig
from mentor.engine import checkpoint
from mentor.engine.loop import is_better
from mentor.engine.optim import lr_factor


def test_cosine_with_warmup_by_hand():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1)
    # 10 steps per epoch, 5 epochs, base lr 0.1
    assert lr_factor(cfg, 0, 10, 5, 0.1) == 0
    assert lr_factor(cfg, 5, 10, 5, 0.1) == pytest.approx(0.5)  # half-way through warm-up
    assert lr_factor(cfg, 10, 10, 5, 0.1) == pytest.approx(1.0)
    assert lr_factor(cfg, 30, 10, 5, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(cfg, 50, 10, 5, 0.1) == pytest.approx(0.0, abs=1e-12)


def test_cosine_floor_and_multistep_by_hand():
    floor = ScheduleConfig(name="cosine", min_lr=0.01)
    assert lr_factor(floor, 100, 10, 10, 0.1) == pytest.approx(0.1)  # ends at min_lr / base
    steps = ScheduleConfig(name="multistep", milestones=[150, 180, 210], gamma=0.1)
    assert lr_factor(steps, 149 * 10, 10, 240, 0.05) == 1.0
    assert lr_factor(steps, 150 * 10, 10, 240, 0.05) == pytest.approx(0.1)
    assert lr_factor(steps, 215 * 10, 10, 240, 0.05) == pytest.approx(0.001)


def test_best_epoch_selection():
    assert is_better({"val/accuracy": 0.5}, {}, "val/accuracy")
    assert is_better({"val/accuracy": 0.6}, {"val/accuracy": 0.5}, "val/accuracy")
    assert not is_better({"val/accuracy": 0.5}, {"val/accuracy": 0.5}, "val/accuracy")  # first best kept
    assert is_better({"val/loss": 0.2}, {"val/loss": 0.3}, "val/loss")
    assert not is_better({"val/loss": 0.4}, {"val/loss": 0.3}, "val/loss")
    assert is_better({"train/loss": 1.0}, {"train/loss": 0.1}, "val/accuracy")  # no val set: last wins


def test_checkpoints_are_atomic_and_errors_name_the_file(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save_atomic({"w": torch.ones(2)}, path)
    assert torch.equal(checkpoint.load(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        checkpoint.save_atomic({"w": Boom()}, path)
    assert torch.equal(checkpoint.load(path)["w"], torch.ones(2))  # the old one survives
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]

    path.write_bytes(b"\x00garbage")
    with pytest.raises(checkpoint.CheckpointError, match="c.pt: not a readable checkpoint"):
        checkpoint.load(path)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(checkpoint.CheckpointError, match="weights do not fit"):
        checkpoint.load_weights(model, {"weight": torch.ones(3, 3)}, "x.pt")


def test_a_step_gets_step_info_only_when_written_to_take_it():
    from mentor.engine.loop import takes_info

    def old(x, y):
        return x

    def bound(x, rows, student=None, targets=None):  # loop values bound as defaults: still (x, y)
        return x

    def typed(x, y, info):
        return x

    def by_name(x, y, info=None):
        return x

    assert not takes_info(old) and not takes_info(bound)
    assert takes_info(typed) and takes_info(by_name)
