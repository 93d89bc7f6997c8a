"""Crash safety in CI: runs SIGKILLed at chosen moments (single and double kills), resumed, and compared with
an uninterrupted run, store against store (experiments/benchmarks/crash_safety.py; its full table is in
docs/crash_safety.md). Fashion-MNIST from the Debian package, tiny subsets."""

from __future__ import annotations

import importlib.util
import random
import signal
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "experiments" / "benchmarks" / "crash_safety.py"
spec = importlib.util.spec_from_file_location("crash_safety", SCRIPT)
crash = importlib.util.module_from_spec(spec)
spec.loader.exec_module(crash)

pytestmark = pytest.mark.skipif(not Path(crash.DEFAULT_DATA).is_dir() and "MENTOR_FASHION_MNIST_DIR" not in
                                crash.os.environ, reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")

#: shape -> the kill plans tried on it (a plan of two kills kills the resumed run once more)
REDUCED = {
    "train": [["checkpoint@1", "epoch@1"], ["model@1", "stage@1"]],  # double kills: two points a plan
    "distill_cached": [["cache@3", "cache@2"]],  # a teacher cache's build killed, then its resumed build
    "noisy_student": [["step", "step@2"]],
    "mpl": [["step", "model@1"]],
}


@pytest.mark.parametrize("shape", list(REDUCED))
@pytest.mark.slow
def test_killed_and_resumed_runs_end_as_if_never_killed(tmp_path, shape):
    config = crash.SHAPES[shape]
    ref = crash.reference(shape, config, tmp_path / "reference")
    assert ref["counts"]["step"] > 0 and ref["counts"]["checkpoint"] > 0
    for i, kills in enumerate(REDUCED[shape]):
        row = crash.trial(shape, config, ref, kills, tmp_path / f"trial-{i}", random.Random(0))
        assert all(entry.endswith("killed") for entry in row["kills"]), row
        assert row["exact"], f"{shape} {row['kills']}: " + "\n".join(row["differences"])


def test_the_comparison_sees_a_lost_metric_and_a_run_left_running():
    """The harness itself can fail: a store missing one logged step, or a run left RUNNING, differs."""
    run = {"status": "FINISHED", "params": {"a": "1"}, "metrics": {"val/accuracy": [(1, 0.5), (2, 0.6)],
           "throughput": [(1, 900.0)]}, "models": ["m:READY"], "artifacts": ["x.png"], "inputs": []}
    lost = {**run, "metrics": {**run["metrics"], "val/accuracy": [(1, 0.5)]}}
    running = {**run, "status": "RUNNING"}
    timed = {**run, "metrics": {**run["metrics"], "throughput": [(1, 1200.0)]}}
    assert crash.differences({"experiment": run}, {"experiment": timed}) == []  # a timing may differ
    assert crash.differences({"experiment": run}, {"experiment": lost}) == [
        "experiment: metric val/accuracy 2 -> 1 values (steps [] extra, [2] missing)"]
    assert crash.differences({"experiment": run}, {"experiment": running}) == [
        "experiment: status 'FINISHED' -> 'RUNNING'"]
    assert crash.differences({"experiment": run}, {"experiment": run, "experiment/x": run}) == [
        "experiment/x: extra run (FINISHED)"]


@pytest.mark.slow
def test_a_kill_point_that_never_comes_lets_the_run_finish(tmp_path):
    """The child kills only at the n-th moment: asked for one beyond the run's last, the run ends normally."""
    path = crash.prepare(tmp_path, "train", crash.SHAPES["train"])
    done = crash.mentor(tmp_path, ["run", path.name], "stage", 5)
    assert done.returncode == 0, done.stderr[-2000:]
    killed = crash.mentor(tmp_path, ["run", path.name], "stage", 1)
    assert killed.returncode == -signal.SIGKILL
