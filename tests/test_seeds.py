"""Multi-seed runs: one run per seed under a parent that logs mean and std; compare shows them; resume."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml
from mlflow import MlflowClient

import mentor.plugins
from mentor import hookimpl
from mentor.cli import main
from mentor.tracking.store import tracking_uri

from .test_teachers import DATA, STUDENT

CONFIG = {"name": "multi", "data": DATA, "models": {"m": STUDENT},
          "stages": [{"name": "fit", "kind": "train", "model": "m", "epochs": 2, "batch_size": 16}],
          "engine": {"progress": "none"}, "tracking": {"log_model": False}}


def write(workdir, **extra):
    path = workdir / "multi.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **extra}))
    return path


def runs(client):
    return client.search_runs([client.get_experiment_by_name("multi").experiment_id])


@pytest.mark.slow
def test_seeds_run_once_each_under_a_parent_that_logs_mean_and_std(workdir, capsys):
    path = write(workdir, seeds=[0, 1, 2])
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    client = MlflowClient(tracking_uri())
    everything = runs(client)
    [parent] = [r for r in everything if r.data.tags.get("mentor.kind") == "seeds"]
    assert parent.info.status == "FINISHED" and parent.data.tags["mentor.seeds"] == "0,1,2"
    members = {int(r.data.tags["mentor.seed"]): r for r in everything
               if r.data.tags.get("mentor.kind") == "experiment"}
    assert sorted(members) == [0, 1, 2]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in members.values())
    # each seed also draws its own split, since the file does not pin data.split_seed
    assert [members[s].data.params["data.split_seed"] for s in (0, 1, 2)] == ["0", "1", "2"]
    assert [members[s].data.params["seed"] for s in (0, 1, 2)] == ["0", "1", "2"]
    stage_runs = {r.data.tags["mlflow.parentRunId"]: r for r in everything if r.data.tags.get("mentor.kind") == "stage"}
    values = [stage_runs[members[s].info.run_id].data.metrics["best.test.accuracy"] for s in (0, 1, 2)]
    m = parent.data.metrics
    assert m["fit/best.test.accuracy/mean"] == pytest.approx(statistics.mean(values))
    assert m["fit/best.test.accuracy/std"] == pytest.approx(statistics.stdev(values))
    assert m["fit/best.test.accuracy/n"] == 3
    assert f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}" in out

    assert main(["compare", "multi", "--level", "seeds", "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["stage"] == "fit" and row["n"] == 3 and row["run_id"] == parent.info.run_id
    assert row["mean"] == pytest.approx(statistics.mean(values))
    assert row["std"] == pytest.approx(statistics.stdev(values))
    assert row["min"] == min(values) and row["max"] == max(values)


@pytest.mark.slow
def test_a_pinned_split_stays_and_the_cli_flag_overrides_the_file(workdir, capsys):
    config = {**CONFIG, "data": {**DATA, "split_seed": 5}}
    path = workdir / "pinned.yaml"
    path.write_text(yaml.safe_dump({**config, "seeds": [0, 1, 2]}))
    assert main(["run", str(path), "--seeds", "3,4"]) == 0, capsys.readouterr().err
    members = [r for r in runs(MlflowClient(tracking_uri())) if r.data.tags.get("mentor.kind") == "experiment"]
    assert sorted(r.data.tags["mentor.seed"] for r in members) == ["3", "4"]
    assert {r.data.params["data.split_seed"] for r in members} == {"5"}


class KillSeed:
    """Ctrl-C at the end of the first epoch of the run with seed 1, once."""

    def __init__(self):
        self.fired = False

    @hookimpl
    def on_epoch_end(self, stage, ctx, epoch, metrics):
        if ctx.experiment.seed == 1 and epoch == 0 and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


@pytest.mark.slow
def test_a_killed_multi_seed_run_resumes_keeping_the_finished_seeds(workdir, capfd, monkeypatch):
    killer = KillSeed()
    monkeypatch.setattr(mentor.plugins, "default_plugins", lambda: mentor.plugins.load_plugins(extra=[killer]))
    path = write(workdir)
    assert main(["run", str(path), "--seeds", "0,1,2"]) == 130
    assert "--resume --seeds 0,1,2" in capfd.readouterr().err
    client = MlflowClient(tracking_uri())
    [parent] = [r for r in runs(client) if r.data.tags.get("mentor.kind") == "seeds"]
    assert parent.info.status == "KILLED"
    assert main(["run", str(path), "--seeds", "0,1,2", "--resume"]) == 0
    err = capfd.readouterr().err
    assert "seed 0: finished before" in err and "resuming run" in err
    everything = runs(client)
    assert len([r for r in everything if r.data.tags.get("mentor.kind") == "seeds"]) == 1
    members = [r for r in everything if r.data.tags.get("mentor.kind") == "experiment"]
    assert sorted(r.data.tags["mentor.seed"] for r in members) == ["0", "1", "2"]  # seed 1 resumed, not doubled
    assert all(r.info.status == "FINISHED" for r in members)
    assert client.get_run(parent.info.run_id).data.metrics["fit/best.test.accuracy/n"] == 3


@pytest.mark.parametrize(("args", "message"), [(["--seeds", "0,x"], "comma-separated integers"),
                                               (["--seeds", "1,1"], "distinct")])
def test_bad_seed_lists_exit_2(workdir, capsys, args, message):
    path = write(workdir)
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), *args])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_repeated_seeds_in_the_file_are_a_located_error(workdir, capsys):
    path = write(workdir, seeds=[0, 0])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "seeds" in err and "repeat" in err and "multi.yaml:" in err
