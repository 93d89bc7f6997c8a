"""The GPU suite (experiments/benchmarks/gpu_suite.py) runs end to end at tiny sizes on the CPU, so it cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SUITE = Path(__file__).parents[1] / "experiments" / "benchmarks" / "gpu_suite.py"
FIGURES = [
    "KD step, batch 64, mentor", "KD step, batch 256, mentor", "KD step breakdown", "batch 64, plain loop fp32",
    "batch 256, plain loop fp32", "plain loop bf16 + channels_last", "ratio mentor / plain loop fp32, batch 256",
    "ratio mentor / plain loop fp32, batch 64", "compiled", "host data placement", "teacher cache of 4 views",
    "MPL step", "training seconds to 94%", "Fashion-MNIST teacher step",
]


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_fills_every_figure(tmp_path):
    out = tmp_path / "suite.json"
    result = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(out), "--workdir",
                             str(tmp_path / "work")], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["dry_run"] is True
    assert [r["rc"] for r in document["steps"].values() if r["name"] != "fashion_time_to_94"] == [0] * 10
    assert all(r["result"] is not None for r in document["steps"].values() if r["name"] != "fashion_run")
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(FIGURES)
    for figure, row in zip(FIGURES, rows, strict=True):
        assert figure in row
        assert "failed" not in row
    assert "DRY RUN" in result.stdout
    kd = document["steps"]["kd_fast"]["result"]["stages"]
    assert [s["stage"] for s in kd] == ["kd_b64", "kd_b256"] and all(s["images_per_second"] > 0 for s in kd)
    [cached] = document["steps"]["kd_cached"]["result"]["stages"]
    assert cached["teacher_cache"]["views"] == 4 and cached["breakdown_ms"]["teacher_forward"] == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine would run the real suite")
def test_without_a_gpu_the_real_suite_refuses_at_once(tmp_path):
    result = subprocess.run([sys.executable, str(SUITE), "--out", str(tmp_path / "x.json")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "no CUDA device" in result.stderr and "--dry-run" in result.stderr
    assert not (tmp_path / "x.json").exists()
