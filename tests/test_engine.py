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


def test_a_step_object_gets_batches_and_info_and_its_lifecycle_from_the_loop(tmp_path):
    """The typed contract: ``step(batch, info)`` with ``epoch_start`` and ``fit_end`` on the object; a resumed
    fit starts the epoch it resumes and ends again; the weights it trains are the model's."""
    import mentor
    from mentor.config.schema import TrainingConfig
    from mentor.engine.loop import fit
    from mentor.engine.runtime import Runtime

    class Step:
        def __init__(self, model):
            self.model, self.calls = model, []

        def epoch_start(self, epoch):
            self.calls.append(("epoch", epoch))

        def fit_end(self):
            self.calls.append(("end",))

        def __call__(self, batch: mentor.Batch, info: mentor.StepInfo):
            self.calls.append(("step", info.epoch, info.step, tuple(batch.inputs.shape), batch.targets.tolist()))
            return torch.nn.functional.cross_entropy(self.model(batch.inputs), batch.targets), {}

    torch.manual_seed(0)
    data = mentor.ImageSet(torch.randint(0, 256, (4, 1, 2, 2), dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    info = mentor.DataInfo(num_classes=2, in_channels=1, image_size=(2, 2), mean=(0.5,), std=(0.25,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    runtime = Runtime(torch.device("cpu"), None, False, False, "none")
    cfg = TrainingConfig(epochs=2, batch_size=2, optimizer={"name": "sgd", "lr": 0.1})

    def run(epochs):
        step = Step(model)
        task = mentor.TrainTask(model=model, step=step, data=data)
        assert task.on_epoch == step.epoch_start and task.on_end == step.fit_end
        result = fit(task, cfg.model_copy(update={"epochs": epochs}), stage="s", seed=0, info=info, eval_sets={},
                     augment=None, runtime=runtime, checkpoint_path=tmp_path / "c.pt")
        task.on_end()  # StageContext.fit calls it after the loop
        return step.calls, result

    calls, result = run(1)
    assert [c[0] for c in calls] == ["epoch", "step", "step", "end"] and calls[0] == ("epoch", 0)
    assert [c[1:3] for c in calls if c[0] == "step"] == [(0, 1), (0, 2)]  # epoch 0, steps 1 and 2 of the fit
    assert all(c[3] == (2, 1, 2, 2) for c in calls if c[0] == "step")  # normalised images, as the data holds them
    assert sorted(sum((c[4] for c in calls if c[0] == "step"), [])) == [0, 0, 1, 1]  # every label once
    calls, result = run(2)  # resumed from epoch 1's checkpoint: the second epoch only
    assert [c[0] for c in calls] == ["epoch", "step", "step", "end"] and calls[0] == ("epoch", 1)
    assert [c[1:3] for c in calls if c[0] == "step"] == [(1, 3), (1, 4)]
    assert len(result.history) == 2
