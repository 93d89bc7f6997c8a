"""The teacher cache: exact under augmentation, shared by runs and sweep trials, resumable, and honest on bad input.

Exactness is checked where the student meets it: the batches the training loop
cuts (``Batches(views=...)``, the loop's own class and path) against the teacher
run live on exactly those pixels.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from mlflow import MlflowClient

from mentor import BatchAugment, Batches, FeatureTap, ImageSet, Runtime, TeacherCacheConfig
from mentor.cli import main
from mentor.config.document import Document
from mentor.config.loader import validate_document
from mentor.context import StageContext
from mentor.search.sweep import run_sweep
from mentor.teacher_cache import TeacherCache, open_cache
from mentor.teacher_cache import build as cache_build
from mentor_plugins.models.small_cnn import small_cnn

from .conftest import synthetic_images

CPU = Runtime(torch.device("cpu"), None, False, False, "none")
MEAN, STD = (0.3,), (0.3,)

# --------------------------------------------------------------------------- the mechanism


def test_a_recorded_draw_rebuilds_the_augmentation_bit_for_bit():
    """draw + apply is the augmentation the loop draws live: same generator seed, same pixels."""
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    augment = BatchAugment(crop_padding=3, flip=True, randaugment=(2, 9))
    live = augment(x, torch.Generator().manual_seed(7))
    draw = augment.draw(len(x), torch.Generator().manual_seed(7))
    assert torch.equal(augment.apply(x, draw), live)
    assert set(draw.tensors()) == {"ops", "signs", "crop", "flip"}
    assert draw.crop.shape == (64, 2) and int(draw.crop.max()) <= 6 and int(draw.crop.min()) >= 0
    # a row's view depends on its own draw only: a subset of rows rebuilds the same pixels
    rows = torch.tensor([5, 0, 63])
    assert torch.equal(augment.apply(x[rows], draw.map(lambda t: t[rows])), live[rows])


def _teacher(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return small_cnn(4, 1, channels=[8, 8]).eval()


def _open(teacher, images, root, *, nodes=(), views=3, store="float32", top_k=None, augment=None, max_gb=8.0):
    augment = augment or BatchAugment(crop_padding=2, flip=True)
    shapes = {}
    if nodes:
        with torch.no_grad():
            _, feats = FeatureTap(teacher, list(nodes), "teacher")(images[:2].float())
        shapes = {n: tuple(feats[n].shape[1:]) for n in nodes}
    return open_cache(teacher, images, config=TeacherCacheConfig(views=views, store=store, top_k=top_k, max_gb=max_gb),
                      augment=augment, augment_record={"crop_padding": augment.crop_padding, "flip": augment.flip},
                      nodes=list(nodes), feature_shapes=shapes, classes=4, root=root, origin="test/student",
                      teacher_label="t", mean=MEAN, std=STD, runtime=CPU, batch_size=64, stage_seed=3)


def _student_batches(cache: TeacherCache, images: torch.Tensor) -> Batches:
    """The training loop's batches for a cached stage: row numbers as targets, recorded views."""
    rows = ImageSet(images, torch.arange(len(images)))
    return Batches(rows, 32, shuffle=True, drop_last=True, mean=MEAN, std=STD, seed=3, views=cache.views)


@pytest.mark.parametrize("store", ["float32", "float16"])
def test_cached_outputs_are_the_live_teacher_on_the_pixels_the_student_sees(tmp_path, store):
    data = synthetic_images(300, 0)
    teacher = _teacher()
    node = "features.block2.relu"
    cache = _open(teacher, data.images, tmp_path, nodes=[node], store=store)
    assert isinstance(cache, TeacherCache) and not cache.reused
    tap = FeatureTap(teacher, [node], "teacher")
    seen_views = set()
    for epoch in range(4):
        for x, rows in _student_batches(cache, data.images).epoch(epoch):
            with torch.no_grad():
                live_logits, live_features = tap(x)
            logits, features = cache.outputs(rows, epoch)
            seen_views |= {(int(r), int(v)) for r, v in zip(rows, cache.views.view_of(rows, epoch), strict=True)}
            student = torch.randn_like(live_logits)  # any student: the KD term against each target
            kd_live = F.kl_div(F.log_softmax(student / 4, 1), F.softmax(live_logits / 4, 1), reduction="batchmean")
            kd_cached = F.kl_div(F.log_softmax(student / 4, 1), F.softmax(logits / 4, 1), reduction="batchmean")
            if store == "float32":  # bit for bit: the stored float32 outputs are the live ones
                assert torch.equal(logits, live_logits)
                assert torch.equal(features[node], live_features[node])
                assert kd_cached.item() == kd_live.item()
            else:  # float16 rounding of each value (relative 2^-11), nothing else
                torch.testing.assert_close(logits, live_logits.half().float(), rtol=2**-10, atol=1e-6)
                torch.testing.assert_close(features[node], live_features[node].half().float(), rtol=2**-10,
                                           atol=1e-6)
                assert abs(kd_cached.item() - kd_live.item()) < 1e-5
    # every image cycles through its views: 4 epochs over 3 views use all three for the rows seen
    per_row = {}
    for r, v in seen_views:
        per_row.setdefault(r, set()).add(v)
    assert max(len(v) for v in per_row.values()) == 3


def test_top_k_keeps_the_largest_logits_and_the_mean_of_the_rest(tmp_path):
    data = synthetic_images(64, 0)
    teacher = _teacher()
    cache = _open(teacher, data.images, tmp_path, top_k=2, views=1)
    assert set(cache.arrays) == {"top_values", "top_classes", "rest_mean"}
    x, rows = next(iter(_student_batches(cache, data.images).epoch(0)))
    with torch.no_grad():
        live = teacher(x)
    logits, _ = cache.outputs(rows, 0)
    values, classes = live.topk(2, dim=1)
    assert torch.equal(logits.gather(1, classes), values)
    others = torch.ones_like(live, dtype=torch.bool).scatter_(1, classes, False)
    rest = (live * others).sum(1) / 2
    torch.testing.assert_close(logits[others].reshape(-1, 2), rest[:, None].expand(-1, 2), rtol=1e-6, atol=1e-6)


def test_no_augmentation_is_one_view(tmp_path):
    data = synthetic_images(64, 0)
    cache = _open(_teacher(), data.images, tmp_path, views=8, augment=BatchAugment())
    assert cache.meta["record"]["views"] == 1 and cache.arrays["logits"].shape == (1, 64, 4)


# --------------------------------------------------------------------------- bad states of the cache


def test_a_build_killed_midway_resumes_to_the_same_cache(tmp_path, monkeypatch, capsys):
    data = synthetic_images(200, 0)
    teacher = _teacher()
    monkeypatch.setattr(cache_build, "CHUNK_ROWS", 48)  # 5 chunks per view, 15 in all
    whole = _open(teacher, data.images, tmp_path / "whole")

    markers, real = [], cache_build.checkpoint.write_text_atomic

    def killed_at_the_fourth_marker(text, path):
        if Path(path).parent.name == "done":
            markers.append(path)
            if len(markers) == 4:
                raise KeyboardInterrupt
        real(text, path)

    monkeypatch.setattr(cache_build.checkpoint, "write_text_atomic", killed_at_the_fourth_marker)
    with pytest.raises(KeyboardInterrupt):
        _open(teacher, data.images, tmp_path / "killed")
    monkeypatch.setattr(cache_build.checkpoint, "write_text_atomic", real)
    capsys.readouterr()
    resumed = _open(teacher, data.images, tmp_path / "killed")
    err = capsys.readouterr().err
    assert "resuming" in err and "3 of 15 chunks were built before" in err
    assert "(456 teacher forwards of one image)" in err  # 3 views x 200 images, less the 3 chunks of 48 done
    for role in whole.arrays:
        a, b = whole.folder / whole.meta["arrays"][role]["name"], resumed.folder / resumed.meta["arrays"][role]["name"]
        assert a.read_bytes() == b.read_bytes()


def test_a_damaged_cache_is_rebuilt_and_a_changed_teacher_is_never_reused(tmp_path, capsys):
    data = synthetic_images(100, 0)
    first = _open(_teacher(0), data.images, tmp_path)
    expected = first.arrays["logits"].clone()
    logits = first.folder / "logits.bin"
    logits.write_bytes(logits.read_bytes()[:100])  # truncated
    capsys.readouterr()
    again = _open(_teacher(0), data.images, tmp_path)
    err = capsys.readouterr().err
    assert "its files are damaged: logits.bin is 100 bytes" in err and again.folder == first.folder
    assert torch.equal(again.arrays["logits"], expected)

    other = _open(_teacher(1), data.images, tmp_path)
    err = capsys.readouterr().err
    assert other.folder != first.folder and not other.reused
    assert f"not reusing cache {first.key}: the teacher's weights changed" in err
    changed = data.images.clone()
    changed[0, 0, 0, 0] ^= 1
    _open(_teacher(0), changed, tmp_path)
    assert "the training images changed" in capsys.readouterr().err
    assert _open(_teacher(0), data.images, tmp_path).reused  # the first one is still there and whole


def test_outputs_beyond_float16_ask_for_float32(tmp_path):
    data = synthetic_images(32, 0)
    teacher = _teacher()
    with torch.no_grad():
        teacher.fc.bias.fill_(1e6)
    with pytest.raises(cache_build.TeacherCacheError, match="beyond float16's range.*store: float32"):
        _open(teacher, data.images, tmp_path, store="float16")


# --------------------------------------------------------------------------- through mentor run


DATA = {"source": "random_images", "val_size": 64, "augment": {"crop_padding": 2, "flip": True},
        "params": {"train_size": 320, "test_size": 64, "num_classes": 4, "channels": 1, "image_size": 8}}


def experiment(cache, teacher_epochs: int = 1, losses=None) -> dict:
    return {
        "name": "cached", "seed": 0, "data": copy.deepcopy(DATA),
        "models": {"teacher": {"name": "small_cnn", "params": {"channels": [8, 8]}},
                   "student": {"name": "small_cnn", "params": {"channels": [4]}}},
        "stages": [
            {"name": "teacher", "kind": "train", "model": "teacher", "epochs": teacher_epochs, "batch_size": 32},
            {"name": "student", "kind": "distill", "teacher": "teacher", "student": "student", "epochs": 2,
             "batch_size": 32, "teacher_cache": cache,
             "losses": losses or [{"name": "cross_entropy", "weight": 0.5},
                                  {"name": "kd", "weight": 0.5, "params": {"temperature": 4}}]},
        ],
        "engine": {"progress": "none"}, "tracking": {"log_model": False},
    }


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def student_runs(workdir: Path) -> list:
    c = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    exp = c.get_experiment_by_name("cached")
    runs = c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in runs if r.data.tags.get("mentor.stage") == "student"]


HINT = [{"name": "cross_entropy", "weight": 0.5}, {"name": "kd", "weight": 0.5},
        {"name": "hint", "weight": 1.0, "params": {"student_node": "features.block1.relu",
                                                   "teacher_node": "features.block2.relu"}}]


@pytest.mark.slow
def test_runs_record_the_cache_they_used_and_a_second_run_reuses_it(workdir, capsys):
    path = write(workdir / "exp.yaml", experiment({"views": 2}, losses=HINT))
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    assert "teacher cache: building" in capsys.readouterr().err
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    assert "teacher cache: reusing" in capsys.readouterr().err
    first, second = student_runs(workdir)
    key = first.data.tags["mentor.teacher_cache.key"]
    assert second.data.tags["mentor.teacher_cache.key"] == key
    assert (first.data.tags["mentor.teacher_cache.reused"], second.data.tags["mentor.teacher_cache.reused"]) == \
        ("false", "true")
    assert "teacher_cache.build_seconds" in first.data.metrics and "teacher_cache.build_seconds" not in \
        second.data.metrics
    meta = (workdir / "mlruns" / "cache" / "teacher" / key / "meta.json")
    assert meta.is_file() and "features.block2.relu" in meta.read_text()  # the hint's teacher feature is cached
    # the same student either way: a reused cache gives what the built one gave
    assert second.data.metrics["best.val.accuracy"] == first.data.metrics["best.val.accuracy"]
    assert second.data.metrics["train/loss/hint"] == first.data.metrics["train/loss/hint"]


@pytest.mark.slow
def test_a_cache_over_max_gb_runs_the_teacher_live_and_says_so(workdir, capsys):
    path = write(workdir / "exp.yaml", experiment({"views": 2, "max_gb": 1e-9}))
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    assert "teacher cache off, the teacher runs live: 2 views of 256 images would take" in capsys.readouterr().err
    [run] = student_runs(workdir)
    assert run.data.tags["mentor.teacher_cache"].startswith("live: 2 views of 256 images")
    assert not (workdir / "mlruns" / "cache" / "teacher").exists()


@pytest.mark.slow
def test_too_little_disk_stops_the_run_before_building_with_the_size_needed(workdir, capsys, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(cache_build.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1000))
    path = write(workdir / "exp.yaml", experiment({"views": 4}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "needs 8.2 KB more on its disk, which has 1.0 KB free" in err and "Traceback" not in err
    assert not list((workdir / "mlruns" / "cache" / "teacher").glob("*/logits.bin"))


# --------------------------------------------------------------------------- a sweep pays for its teacher once


def _count_teacher_forwards(monkeypatch) -> list[int]:
    """Images every teacher a stage asks for (ctx.teacher) runs on, over the whole process."""
    seen: list[int] = []
    real = StageContext.teacher

    def counted(self, ref, field="teacher"):
        model = real(self, ref, field)
        model.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
        return model

    monkeypatch.setattr(StageContext, "teacher", counted)
    return seen


@pytest.mark.parametrize("trials", [1, 3])
@pytest.mark.slow
def test_a_sweep_pays_for_its_teacher_once(workdir, monkeypatch, trials):
    seen = _count_teacher_forwards(monkeypatch)
    config = experiment({"views": 3})
    config["search"] = {"metric": "student/best.val.accuracy", "trials": trials,
                        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
                        "space": {"stages[1].losses[1].params.temperature": {"float": [1, 8]}}}
    from mentor.plugins import load_plugins

    plugins = load_plugins()
    run_sweep(validate_document(Document("test", config), plugins.registry), plugins)
    # the teacher stage is deterministic: every trial trains the same teacher, so one cache serves all
    assert sum(seen) == 3 * 256  # three views of the 256 training images, once, whatever the trial count
    assert len(list((workdir / "mlruns" / "cache" / "teacher").glob("*/meta.json"))) == 1


@pytest.mark.slow
def test_without_the_cache_each_trial_pays_every_epoch(workdir, monkeypatch):
    seen = _count_teacher_forwards(monkeypatch)
    config = experiment(None)
    config["search"] = {"metric": "student/best.val.accuracy", "trials": 2,
                        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
                        "space": {"stages[1].losses[1].params.temperature": {"float": [1, 8]}}}
    from mentor.plugins import load_plugins

    plugins = load_plugins()
    run_sweep(validate_document(Document("test", config), plugins.registry), plugins)
    assert sum(seen) == 2 * 2 * 256  # trials x epochs x images (8 full batches of 32)


# --------------------------------------------------------------------------- auto: on where exact


@pytest.mark.slow
def test_auto_caches_a_stage_without_augmentation_and_trains_exactly_as_live(workdir, capsys):
    plain = experiment("auto")
    plain["data"].pop("augment")
    assert main(["run", str(write(workdir / "auto.yaml", plain))]) == 0, capsys.readouterr().err
    assert "teacher cache: building" in capsys.readouterr().err
    plain["stages"][1]["teacher_cache"] = False
    assert main(["run", str(write(workdir / "live.yaml", plain))]) == 0, capsys.readouterr().err
    assert "teacher cache" not in capsys.readouterr().err
    cached, live = student_runs(workdir)
    assert cached.data.tags["mentor.teacher_cache.views"] == "1" and "mentor.teacher_cache" not in live.data.tags
    [meta] = (workdir / "mlruns" / "cache" / "teacher").glob("*/meta.json")
    assert '"store": "float32"' in meta.read_text()
    # one float32 view is the live teacher bit for bit: the same student, metric for metric
    c = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    for metric in ("train/loss", "train/loss/kd", "val/accuracy", "val/loss"):
        assert [m.value for m in c.get_metric_history(cached.info.run_id, metric)] == \
            [m.value for m in c.get_metric_history(live.info.run_id, metric)], metric


@pytest.mark.slow
def test_auto_leaves_an_augmented_stage_live(workdir, capsys):
    assert main(["run", str(write(workdir / "exp.yaml", experiment("auto")))]) == 0, capsys.readouterr().err
    [run] = student_runs(workdir)
    assert "mentor.teacher_cache" not in run.data.tags
    assert not (workdir / "mlruns" / "cache" / "teacher").exists()


def test_mentor_cache_lists_and_removes_entries(workdir, capsys):
    data = synthetic_images(64, 0)
    root = workdir / "mlruns" / "cache" / "teacher"
    first, second = _open(_teacher(0), data.images, root), _open(_teacher(1), data.images, root)
    capsys.readouterr()
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert first.key[:12] in out and second.key[:12] in out and "test/student" in out
    assert "3 view(s) x 64 images, 4 logits, float32" in out and "2 entries" in out
    assert main(["cache", "--remove", first.key[:8]]) == 0
    assert f"removed teacher {first.key}" in capsys.readouterr().out
    assert not first.folder.exists() and second.folder.exists()
    assert main(["cache", "--remove", "nosuchkey"]) == 2
    assert "matches 0 entries" in capsys.readouterr().err
    assert main(["cache", "--clear"]) == 0
    assert not second.folder.exists()
    assert main(["cache"]) == 0 and "no teacher caches or score tables" in capsys.readouterr().out
