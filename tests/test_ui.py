"""`mentor ui` serves the store `mentor run` wrote, and what a person opens there is what we promise:
run names that tell runs apart, stage runs linked under their experiment run, summary metrics, per-step
and per-epoch curves, and the artifacts, all read back through MLflow's REST API, as the UI reads them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from .conftest import TINY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}/api/2.0/mlflow/"

    def get(self, endpoint: str, **query):
        url = self.base + endpoint + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def post(self, endpoint: str, body: dict):
        request = urllib.request.Request(self.base + endpoint, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture
def served(tmp_path):
    """A quickstart-shaped run (teacher, scratch and distilled student) through the CLI, then `mentor ui`."""
    config = {**TINY, "name": "ui-check", "description": "teacher, scratch and KD student",
              "data": {"source": "random_images", "val_size": 32,
                       "params": {"train_size": 160, "test_size": 32, "num_classes": 4, "channels": 1,
                                  "image_size": 8}},
              "tracking": {"log_model": False, "log_every_steps": 2}}
    student = dict(TINY["stages"][1], epochs=2)
    config["stages"] = [dict(TINY["stages"][0]),
                        {**student, "name": "scratch", "losses": [{"name": "cross_entropy"}]},
                        {**student, "name": "kd"}]
    path = tmp_path / "ui.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {"CI": "1", "PATH": "/usr/bin:/bin"}  # the store under tmp_path: no MLFLOW_TRACKING_URI from outside
    run = subprocess.run([sys.executable, "-m", "mentor.cli", "run", str(path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    port = free_port()
    said, logged = tmp_path / "ui.out", tmp_path / "ui.err"
    with said.open("w") as out, logged.open("w") as errors:
        ui = subprocess.Popen([sys.executable, "-m", "mentor.cli", "ui", "--port", str(port), "--experiment",
                               "ui-check"], cwd=tmp_path, env=env, stdout=out, stderr=errors)
    api = Api(port)
    try:
        deadline, experiment = time.time() + 300, None  # the server starts in seconds, slower on a busy machine
        while time.time() < deadline and experiment is None and ui.poll() is None:
            try:
                experiment = api.get("experiments/get-by-name", experiment_name="ui-check")["experiment"]
            except OSError:
                time.sleep(1)
        assert experiment is not None, f"the MLflow UI did not answer: {logged.read_text()[-2000:]}"
        # it says where the runs table is, in the UI's model-training view (not its GenAI overview)
        address = (f"http://127.0.0.1:{port}/#/experiments/{experiment['experiment_id']}/runs"
                   "?workflowType=machine_learning&viewStateShareKey=mentor")
        assert said.read_text().splitlines()[0].endswith(f"open {address}")
        tags = {t["key"]: t["value"] for t in experiment["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        # the layout that address opens (MLflow's shared-view tag): stage runs grouped by stage, with summaries
        view = json.loads(tags["mlflow.sharedViewState.mentor"])
        assert view["searchFilter"] == "tags.`mentor.kind` = 'stage'"
        assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "mentor.stage"}]
        assert "metrics.`kept.test.accuracy`" in view["selectedColumns"]
        yield api, experiment, path
    finally:
        ui.terminate()
        ui.wait(timeout=30)


@pytest.mark.slow
def test_the_ui_shows_named_linked_runs_with_summaries_curves_and_artifacts(served):
    api, experiment, path = served
    runs = api.post("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    [parent] = [r for r in runs if tags[r["info"]["run_id"]]["mentor.kind"] == "experiment"]
    parent_id = parent["info"]["run_id"]
    stages = {tags[r["info"]["run_id"]]["mentor.stage"]: r for r in runs
              if tags[r["info"]["run_id"]]["mentor.kind"] == "stage"}
    assert set(stages) == {"teacher", "scratch", "kd"}

    # names that tell runs apart, the description, the source and the parent-child links
    short_hash = tags[parent_id]["mentor.config_hash"][:7]
    assert parent["info"]["run_name"] == f"ui-check · seed 0 · {short_hash}"
    assert tags[parent_id]["mlflow.note.content"] == "teacher, scratch and KD student"
    assert tags[parent_id]["mlflow.source.name"] == str(path) and tags[parent_id]["mlflow.user"]
    for name, run in stages.items():
        run_id = run["info"]["run_id"]
        assert run["info"]["run_name"] == f"{name} · seed 0 · {short_hash}"
        assert tags[run_id]["mlflow.parentRunId"] == parent_id
        assert run["info"]["status"] == "FINISHED"

    # summaries: one value each, on the stage run and, prefixed by the stage, on the experiment run
    kd_id = stages["kd"]["info"]["run_id"]
    kd_metrics = {m["key"]: m["value"] for m in stages["kd"]["data"]["metrics"]}
    parent_metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    for key in ("best.val.accuracy", "best.test.accuracy", "last.test.accuracy", "kept.test.accuracy",
                "best.epoch"):
        assert key in kd_metrics, key
        assert parent_metrics[f"kd/{key}"] == kd_metrics[key]
    assert kd_metrics["best.epoch"] in (1, 2)  # 1-based, as the terminal counts

    def history(run_id: str, key: str) -> dict[int, float]:
        found = api.get("metrics/get-history", run_id=run_id, metric_key=key)["metrics"]
        return {m["step"]: m["value"] for m in found}

    # per-epoch curves on 1-based epochs; per-step curves every 2 steps (128 images / 32: 4 steps an epoch)
    for key in ("val/accuracy", "test/accuracy", "train/loss", "train/accuracy", "train/loss/kd", "lr"):
        assert sorted(history(kd_id, key)) == [1, 2], key
    for key in ("step/train/loss", "step/train/loss/kd", "step/train/accuracy", "step/lr"):
        assert sorted(history(kd_id, key)) == [2, 4, 6, 8], key
    lr = history(kd_id, "step/lr")
    assert lr[2] > lr[8] > 0

    # the run page's Model metrics tab: MLflow files each chart under the part of its name before the last
    # '/', sections sorted by name, names without a '/' last. Every section before that last one holds
    # curves (more than one point): the one-value summaries come after them, not above them.
    sections: dict[str, list[str]] = {}
    for key in kd_metrics:
        sections.setdefault(key.rsplit("/", 1)[0] if "/" in key else "~model metrics (last)", []).append(key)
    named = [name for name in sorted(sections) if not name.startswith("~")]
    assert named[:2] == ["step", "step/train"] and "val" in named  # step/lr, then step/train/*
    for name in named:
        for key in sections[name]:
            assert len(history(kd_id, key)) > 1, f"{key}: a one-point chart in section {name}"
    assert {"best.val.accuracy", "kept.test.accuracy", "best.epoch"} <= set(sections["~model metrics (last)"])

    # artifacts: the resolved stage config, plots and weights on the stage run, the file's config on the parent
    def listed(run_id: str, folder: str = "") -> set[str]:
        query = {"run_id": run_id, **({"path": folder} if folder else {})}
        return {f["path"] for f in api.get("artifacts/list", **query).get("files", [])}

    assert {"stage.yaml", "plots", "checkpoints"} <= listed(kd_id)
    assert listed(kd_id, "plots") == {"plots/learning_curves.png", "plots/confusion_matrix.png"}
    assert "config.yaml" in listed(parent_id)
    params = {p["key"]: p["value"] for p in stages["kd"]["data"]["params"]}
    assert params["stage.losses.1.params.temperature"] == "2.0"
    assert not any(k.startswith("stage.optimizer.betas") for k in params)  # SGD: Adam's options do not apply
