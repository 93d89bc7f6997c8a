"""`mentor bench`: the report's schema, its breakdown, FLOP counting, no MLflow run; the plain-loop baseline."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mentor import Params, hookimpl
from mentor.bench import BenchError, run_bench
from mentor.cli import main
from mentor.config import load_experiment
from mentor.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[1]
STAGE_KEYS = {"stage", "kind", "manual", "batch_size", "images_per_step", "images_per_second", "step_ms",
              "instrumented_step_ms", "breakdown_ms", "overhead", "peak_memory_bytes", "peak_memory_kind",
              "flops_per_step", "achieved_tflops", "mfu", "teacher_cache"}
PARTS = ("data", "teacher_forward", "student_forward", "backward", "optimizer", "other")
RANDOM = {"source": "random_images", "val_size": 0,
          "params": {"train_size": 96, "test_size": 8, "num_classes": 4, "channels": 1, "image_size": 8},
          "augment": {"crop_padding": 1, "flip": True}}


def bench_config(tiny_config):
    """The tests' tiny teacher + distill experiment on the built-in random source (usable from the CLI)."""
    config = copy.deepcopy(tiny_config)
    config["data"] = copy.deepcopy(RANDOM)
    return config


def test_bench_report_schema_and_breakdown(workdir, tiny_config, write_yaml):
    path = write_yaml(bench_config(tiny_config))
    out = workdir / "report.json"
    assert main(["bench", str(path), "--steps", "3", "--warmup", "1", "--out", str(out), "--peak-tflops", "2"]) == 0
    report = json.loads(out.read_text())
    assert {"schema", "mentor", "torch", "config", "device", "engine", "steps", "warmup", "stages"} <= set(report)
    assert report["device"]["type"] == "cpu" and report["device"]["peak_tflops"] == 2.0
    assert report["steps"] == 3 and report["config"] == str(path)
    assert [s["stage"] for s in report["stages"]] == ["teacher", "student"]
    for s in report["stages"]:
        assert set(s) == STAGE_KEYS
        assert s["batch_size"] == s["images_per_step"] == 32
        assert s["images_per_second"] == pytest.approx(32 / (s["step_ms"]["mean"] / 1e3))
        parts = s["breakdown_ms"]
        assert set(parts) == set(PARTS)
        assert all(parts[p] is not None and parts[p] >= 0 for p in PARTS)
        measured = sum(parts[p] for p in PARTS if p != "other")
        step = s["instrumented_step_ms"]["mean"]
        assert measured <= step * 1.05 and sum(parts.values()) == pytest.approx(max(step, measured))
        assert parts["student_forward"] > 0 and parts["backward"] > 0 and parts["optimizer"] > 0
        assert s["flops_per_step"] > 0 and s["peak_memory_kind"] == "process_peak_rss"
        assert s["mfu"] == pytest.approx(s["achieved_tflops"] / 2)
        assert 0 <= s["overhead"]["loop_fraction"] <= 1
    teacher, student = report["stages"]
    assert teacher["breakdown_ms"]["teacher_forward"] == 0
    assert student["breakdown_ms"]["teacher_forward"] > 0
    assert teacher["teacher_cache"] is None and student["teacher_cache"] is None
    # nothing recorded: no MLflow store, no checkpoints
    assert not (workdir / "mlruns").exists() and not list(workdir.glob("*.db"))


def test_bench_chosen_stage_table_and_no_mfu_on_cpu(workdir, tiny_config, write_yaml, capsys):
    path = write_yaml(bench_config(tiny_config))
    assert main(["bench", str(path), "--stage", "student", "--steps", "1", "--warmup", "0", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [s["stage"] for s in report["stages"]] == ["student"]
    assert report["stages"][0]["mfu"] is None and report["device"]["peak_tflops"] is None
    assert "student" in captured.err and "img/s" in captured.err  # the table


def test_bench_of_a_cached_stage_reads_the_cache_built_over_the_rows_it_reaches(workdir, tiny_config, write_yaml,
                                                                              capsys):
    config = bench_config(tiny_config)
    config["stages"][1]["teacher_cache"] = {"views": 2}
    path = write_yaml(config)
    assert main(["bench", str(path), "--stage", "student", "--steps", "2", "--warmup", "1", "--json"]) == 0
    captured = capsys.readouterr()
    [student] = json.loads(captured.out)["stages"]
    assert student["teacher_cache"]["views"] == 2
    assert student["teacher_cache"]["images"] == 2 * 32  # the rows two steps of 32 reach, not the 96 of the split
    assert student["breakdown_ms"]["teacher_forward"] == 0  # the step reads stored outputs
    assert "read from a teacher cache (2 view(s) of the 64 images" in captured.err
    assert not (workdir / "mlruns").exists()  # built in the bench's scratch folder, gone with it


def test_bench_bad_input_exits_2(workdir, tiny_config, write_yaml, capsys):
    path = write_yaml(bench_config(tiny_config))
    assert main(["bench", str(path), "--stage", "studnet"]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'studnet'" in err and "did you mean 'student'" in err and len(err.strip().splitlines()) == 1
    assert main(["bench", str(workdir / "missing.yaml")]) == 2
    assert main(["bench", str(path), "--warmup", "-1"]) == 2


def test_bench_refuses_to_run_under_torchrun(workdir, tiny_config, write_yaml, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["bench", str(write_yaml(bench_config(tiny_config)))]) == 2
    assert "run it without torchrun" in capsys.readouterr().err


def test_teacher_forward_is_timed_through_a_feature_tap(workdir, tiny_config, write_yaml):
    """A hint loss runs the teacher as a traced graph (its leaves, not its forward): still timed."""
    config = bench_config(tiny_config)
    config["stages"][1]["losses"] = [
        {"name": "cross_entropy"},
        {"name": "hint", "params": {"student_node": "features.block1.conv", "teacher_node": "features.block1.conv"}}]
    plugins = load_plugins()
    experiment = load_experiment(write_yaml(config), [], plugins.registry)
    stage = run_bench(experiment, plugins, steps=2, warmup=0, stages=["student"])["stages"][0]
    assert stage["breakdown_ms"]["teacher_forward"] > 0


class LinearModel:
    """A model whose FLOPs are known by hand: flatten, then one Linear layer."""

    @hookimpl
    def register_models(self, register):
        def linear(num_classes, in_channels):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 8 * 8, num_classes))

        register("linear", linear, params=Params, description="flatten + linear (tests)")


def test_flops_per_step_of_a_linear_model(workdir, tiny_config, write_yaml):
    config = bench_config(tiny_config)
    config["models"] = {"teacher": {"name": "linear"}}
    config["stages"] = [config["stages"][0]]
    plugins = load_plugins(extra=[LinearModel()])
    experiment = load_experiment(write_yaml(config), [], plugins.registry)
    report = run_bench(experiment, plugins, steps=1, warmup=0)
    b, n_in, n_out = 32, 1 * 8 * 8, 4
    # forward: one [B, in] x [in, out] product (2 B in out); backward: the weight's gradient only
    # (the input needs none), another 2 B in out; the bias, the loss and the optimizer are not counted.
    assert report["stages"][0]["flops_per_step"] == 4 * b * n_in * n_out


def test_bench_mpl_stage_times_what_a_manual_step_allows(workdir, tiny_config, write_yaml):
    config = bench_config(tiny_config)
    config["data"].update(params={**RANDOM["params"], "train_size": 160}, labeled_per_class=8)
    config["stages"] = [{"name": "mpl", "kind": "mpl", "teacher": "teacher", "student": "student",
                         "batch_size": 8, "unlabeled_ratio": 2, "uda": {"ramp_steps": 4}, "ema_decay": 0.9,
                         "teacher_accuracy_images": 16}]
    plugins = load_plugins()
    experiment = load_experiment(write_yaml(config), [], plugins.registry)
    stage = run_bench(experiment, plugins, steps=2, warmup=1)["stages"][0]
    assert stage["manual"] is True and stage["kind"] == "mpl"
    parts = stage["breakdown_ms"]
    assert parts["student_forward"] is None and parts["backward"] is None and parts["optimizer"] is None
    assert parts["data"] >= 0 and parts["teacher_forward"] > 0 and parts["other"] > 0
    assert stage["flops_per_step"] > 0


def test_bench_errors_name_the_problem(workdir, tiny_config, write_yaml):
    plugins = load_plugins()
    experiment = load_experiment(write_yaml(bench_config(tiny_config)), [], plugins.registry)
    with pytest.raises(BenchError, match="--steps"):
        run_bench(experiment, plugins, steps=0)


def test_random_images_source_is_seeded():
    from mentor_plugins.synthetic import random_images

    a = random_images(train_size=10, test_size=4, num_classes=3, channels=2, image_size=5, seed=1)
    b = random_images(train_size=10, test_size=4, num_classes=3, channels=2, image_size=5, seed=1)
    assert a.train.images.shape == (10, 2, 5, 5) and a.train.images.dtype == torch.uint8
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert int(a.train.labels.max()) < 3 and a.info.num_classes == 3 and len(a.info.mean) == 2
    c = random_images(train_size=10, test_size=4, num_classes=3, channels=2, image_size=5, seed=2)
    assert not torch.equal(a.train.images, c.train.images)


@pytest.mark.slow
def test_plain_kd_script_prints_json():
    command = [sys.executable, str(ROOT / "experiments" / "benchmarks" / "plain_kd.py"), "--batch-size", "8",
               "--steps", "2", "--warmup", "1", "--workers", "1", "--images", "32", "--classes", "10",
               "--teacher", "small_cnn", "--student", "small_cnn", "--device", "cpu"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout
    result = json.loads(out)
    assert result["images_per_second"] > 0 and result["batch_size"] == 8 and result["steps"] == 2
    assert result["precision"] == "fp32" and result["device_type"] == "cpu"


@pytest.mark.slow
def test_time_to_accuracy_reads_the_stage_run(workdir, tiny_config, plugins, capsys):
    import importlib.util

    from mentor.pipeline import run_experiment

    config = copy.deepcopy(tiny_config)
    config["stages"] = [config["stages"][0]]
    config["tracking"] = {"log_model": False}
    run_experiment(load_experiment_dict(config, plugins), plugins)
    spec = importlib.util.spec_from_file_location("tta", ROOT / "experiments" / "benchmarks" / "time_to_accuracy.py")
    tta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tta)
    capsys.readouterr()
    assert tta.main(["tiny", "--stage", "teacher", "--target", "0", "--train-images", "320"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reached_at_epoch"] == 1 and result["training_seconds"] > 0 and result["images_per_epoch"] == 320
    assert tta.main(["tiny", "--stage", "teacher", "--target", "1.01"]) == 1
    assert json.loads(capsys.readouterr().out)["training_seconds"] is None


def load_experiment_dict(config, plugins):
    import yaml

    path = Path("experiment.yaml")
    path.write_text(yaml.safe_dump(config))
    return load_experiment(path, [], plugins.registry)
