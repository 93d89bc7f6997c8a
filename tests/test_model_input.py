"""Every model brings its own input pipeline: size, channels, normalisation and class order, per model,
from the same raw examples; the data's own pipeline leaves a model exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from mentor import DataInfo, ModelInput, PipelineError, WithInput
from mentor.cli import main
from mentor.config.preprocess_schema import PreprocessSpec
from mentor.model_input import bare, raw_pixels, with_input

from .test_teachers import stage_runs, store, write

INFO = DataInfo(num_classes=3, in_channels=3, image_size=(8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                class_names=("ant", "bee", "cat"))
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def data_form(raw: torch.Tensor, info: DataInfo = INFO) -> torch.Tensor:
    """What Batches hands every model: the data's statistics."""
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return raw.float().div(255).sub(mean).div(std)


class Recorder(nn.Module):
    """Returns fixed logits and keeps what it was fed."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.logits, self.seen = logits, None

    def forward(self, x):
        self.seen = x
        return self.logits[: len(x)] * self.scale


# --- by hand --------------------------------------------------------------------------------------

def test_the_datas_own_pipeline_leaves_the_model_unwrapped():
    model = Recorder(torch.zeros(2, 3))
    assert with_input(model, ModelInput.of_data(INFO), INFO) is model
    same_order = ModelInput.of_data(INFO).stated({"classes": ["ant", "bee", "cat"]}, "experiment file")
    assert with_input(model, same_order, INFO) is model


def test_a_shipped_model_with_the_datas_pipeline_is_checked_on_the_very_same_batches():
    from mentor import Batches, ImageSet, ModelBatches

    raw = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    data = ImageSet(raw, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]))
    plain = list(Batches(data, 4, shuffle=False, mean=INFO.mean, std=INFO.std))
    own = list(ModelBatches(data, 4, ModelInput.of_data(INFO), INFO, shuffle=False))
    assert len(plain) == len(own) == 3
    for (x, y), (x2, y2) in zip(plain, own, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)  # bit for bit: export and report figures unchanged
    reordered = ModelInput.of_data(INFO).stated({"classes": ["cat", "ant", "bee"]}, "experiment file")
    _, labels = next(iter(ModelBatches(data, 10, reordered, INFO, shuffle=False)))
    assert labels.tolist() == [1, 2, 0, 1, 2, 0, 1, 2, 0, 1]  # each label as the model's own output column


def test_raw_pixels_come_back_exactly_from_a_normalised_batch():
    raw = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    raw[0, :, 0, 0] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    assert torch.equal(raw_pixels(data_form(raw), INFO), raw)


def test_a_teacher_gets_its_own_normalisation_of_the_same_pixels():
    raw = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    teacher = Recorder(torch.zeros(4, 3))
    pipeline = ModelInput.of_data(INFO).stated(IMAGENET, "experiment file")
    wrapped = with_input(teacher, pipeline, INFO)
    assert isinstance(wrapped, WithInput) and bare(wrapped) is teacher
    wrapped(data_form(raw))
    mean = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    assert torch.equal(teacher.seen, (raw.float() / 255 - mean) / std)  # what its own script fed it
    assert list(wrapped.state_dict()) == ["scale"]  # its weights are the model's own, no prefix


def test_a_grayscale_student_of_another_size_sees_luma_of_the_same_pixels():
    colour = torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 8, 8).contiguous()
    student = Recorder(torch.zeros(2, 3))
    pipeline = ModelInput.of_data(INFO).stated({"channels": 1, "image_size": 12, "mean": [0.5], "std": [0.25]},
                                               "experiment file")
    with_input(student, pipeline, INFO)(data_form(colour))
    luma = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # ITU-R 601, as an unlabeled pool decodes it
    assert student.seen.shape == (2, 1, 12, 12)
    assert torch.allclose(student.seen, torch.full((2, 1, 12, 12), (luma / 255 - 0.5) / 0.25))


def test_outputs_come_back_in_the_datas_class_order_and_an_unknown_class_is_named():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # the model's order: cat, dog, ant, bee
    pipeline = ModelInput.of_data(INFO).stated({"classes": ["cat", "dog", "ant", "bee"]}, "experiment file")
    out = with_input(Recorder(logits), pipeline, INFO)(data_form(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)))
    assert out.tolist() == [[3.0, 4.0, 1.0]]  # ant, bee, cat
    missing = ModelInput.of_data(INFO).stated({"classes": ["cat", "dog", "bee"]}, "experiment file")
    with pytest.raises(PipelineError, match=r"the data's class 'ant' is not among the model's 3 classes"):
        with_input(Recorder(logits), missing, INFO)


def test_the_record_a_shipped_model_carries_is_its_own():
    pipeline = ModelInput.of_data(INFO).stated({"channels": 1, "image_size": [10, 12]}, "experiment file")
    record = pipeline.record(INFO)
    assert (record.channels, record.height, record.width) == (1, 10, 12)
    assert record.mean == (pytest.approx(0.4),) and record.class_names == ("ant", "bee", "cat")
    params = pipeline.params("student")
    assert params["preprocess.student.image_size"] == "10x12" and params["preprocess.student.channels"] == "1"
    assert params["preprocess.student.source"] == "experiment file"


@pytest.mark.parametrize("fields, message", [
    ({"mean": [124.0, 116.0, 104.0], "std": [58.0, 57.0, 57.0]}, "looks like the 0-255 scale"),
    ({"mean": [0.5], "std": [0.2, 0.2, 0.2]}, "disagree on the number of channels"),
    ({"channels": 1, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}, "disagree on the number of channels"),
    ({"mean": [0.5]}, "give mean and std together"),
    ({"classes": ["a", "b", "a"]}, "class 'a' is listed twice"),
    ({"image_size": 0}, "not between 1 and 8192"),
])
def test_a_stated_pipeline_that_cannot_be_right_is_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        PreprocessSpec(**fields)


def test_torchvision_weights_bring_their_transforms():
    from mentor_plugins.models.torchvision_models import torchvision_preprocess

    said = torchvision_preprocess("resnet18", "IMAGENET1K_V1")
    assert said == {"image_size": 224, "channels": 3, **IMAGENET}
    assert torchvision_preprocess("resnet18") is None  # no weights: the data's pipeline


# --- the new user's case, through the CLI ---------------------------------------------------------

CLASSES = ("circle", "cross", "square")
SIZE = 24


def _draw(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 24x24 RGB image of a shape in a random colour on a random dark background."""
    image = np.zeros((SIZE, SIZE, 3), dtype=np.float32) + rng.uniform(0, 60, size=3)
    colour = rng.uniform(120, 255, size=3)
    c, r = rng.uniform(9, 15, size=2), rng.uniform(5, 8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if kind == "circle":
        mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r ** 2
    elif kind == "square":
        mask = (abs(yy - c[0]) <= r * 0.8) & (abs(xx - c[1]) <= r * 0.8)
    else:
        mask = ((abs(yy - c[0]) <= 1.2) & (abs(xx - c[1]) <= r)) | ((abs(xx - c[1]) <= 1.2) & (abs(yy - c[0]) <= r))
    image[mask] = colour
    image += rng.normal(0, 8, size=image.shape)
    return image.clip(0, 255).astype(np.uint8)


def _image_folder(root: Path, per_class: dict[str, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(7)
    for split, n in per_class.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_draw(name, rng)).save(folder / f"{i:03d}.png")


def _users_own_teacher(root: Path) -> tuple[Path, float]:
    """What a user brings: a resnet18 trained by their own script with ImageNet normalisation, saved as
    training scripts save it, and its accuracy on their test folder by that script."""
    import torchvision
    from torchvision.transforms import v2

    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(**IMAGENET)])
    train = torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    test = torchvision.datasets.ImageFolder(str(root / "test"), transform=transform)
    assert tuple(train.classes) == CLASSES
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
    model.train()
    for _ in range(6):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        x, y = next(iter(torch.utils.data.DataLoader(test, batch_size=len(test))))
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    path = root / "teacher.pt"
    torch.save({"epoch": 6, "model_state_dict": model.state_dict()}, path)
    return path, accuracy


@pytest.mark.slow
def test_a_users_own_teacher_scores_its_own_accuracy_and_teaches_a_grayscale_student_of_another_size(
        workdir, capsys):
    root = workdir / "shapes"
    _image_folder(root, {"train": 60, "test": 30})
    checkpoint, users_accuracy = _users_own_teacher(root)
    assert users_accuracy > 0.75  # a teacher worth distilling, by the user's own script
    experiment = {
        "name": "own", "data": {"source": "image_folder", "val_size": 30,
                                "params": {"root": str(root), "image_size": SIZE}},
        "models": {
            "teacher": {"name": "torchvision", "params": {"arch": "resnet18"}, "checkpoint": str(checkpoint),
                        "checkpoint_key": "model_state_dict", "preprocess": IMAGENET},
            "plain": {"name": "torchvision", "params": {"arch": "resnet18"}, "checkpoint": str(checkpoint),
                      "checkpoint_key": "model_state_dict"},
            "student": {"name": "small_cnn", "params": {"channels": [8, 16]},
                        "preprocess": {"channels": 1, "image_size": 16}}},
        "stages": [
            {"name": "teacher_eval", "kind": "evaluate", "model": "teacher"},
            {"name": "as_the_data", "kind": "evaluate", "model": "plain"},
            {"name": "student", "kind": "distill", "teacher": "teacher", "student": "student", "epochs": 5,
             "batch_size": 32, "export": {"int8": False}}],
        "engine": {"progress": "none"}}
    path = write(workdir, experiment)
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    err = captured.err
    assert "[student] exported: " in captured.out and "model.onnx (ONNX Runtime test accuracy " in captured.out
    assert "models.teacher takes its own input: 3 channels, 24x24, mean [0.485, 0.456, 0.406]" in err

    runs = stage_runs(store(workdir), "own")
    # the whole test folder, as the user's script scored it (the test split is the test folder)
    assert runs["teacher_eval"].data.metrics["test/accuracy"] == pytest.approx(users_accuracy, abs=0.005)
    # the same weights fed the data's own statistics: what mentor did before, and what the warning is for
    assert runs["as_the_data"].data.metrics["test/accuracy"] < users_accuracy

    params = runs["student"].data.params  # both pipelines recorded on the run that used them
    assert params["preprocess.teacher.mean"] == "[0.485, 0.456, 0.406]"
    assert params["preprocess.student.channels"] == "1" and params["preprocess.student.image_size"] == "16x16"
    assert runs["student"].data.metrics["best.test.accuracy"] > 1 / 3 + 0.15

    exported = next(workdir.rglob("student/export/model.onnx"))
    record = json.loads((exported.parent / "export.json").read_text())["preprocess"]
    assert (record["channels"], record["height"], record["width"]) == (1, 16, 16)
    assert record["class_names"] == list(CLASSES)

    out = workdir / "predictions.parquet"
    assert main(["predict", str(exported), str(root / "test"), "--out", str(out)]) == 0
    table = pl.read_parquet(out)
    assert len(table) == 3 * 30
    truth = [Path(p).parent.name for p in table["path"].to_list()]
    predicted = table["class"].to_list()
    agreement = float(np.mean([t == p for t, p in zip(truth, predicted, strict=True)]))
    kept = runs["student"].data.metrics["export.onnx.test.accuracy"]
    assert agreement == pytest.approx(kept, abs=0.05)  # files decoded the student's own way
