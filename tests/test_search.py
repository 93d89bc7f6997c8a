"""Hyperparameter search: the search block, sweeps in Optuna and MLflow, workers, resume, compare.

In-process sweeps run the tiny synthetic experiment of conftest.py; sweeps in
worker processes (which cannot see that in-process plugin) run a tiny
Fashion-MNIST experiment from Debian's dataset package.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import polars as pl
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from mentor import hookimpl
from mentor.cli import main
from mentor.config import ConfigError, load_experiment, validate_document
from mentor.config.document import Document
from mentor.config.search import ParamSpec
from mentor.pipeline import run_experiment
from mentor.plugins import load_plugins
from mentor.search import run_sweep, space
from mentor.search.storage import masked, open_storage
from mentor.tracking.compare import compare

from .conftest import SyntheticData

FASHION = Path(os.environ.get("MENTOR_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="dataset-fashion-mnist absent (apt-get install dataset-fashion-mnist)")
TEMPERATURE = "stages[1].losses[1].params.temperature"


def small(config, **search):
    """The tiny experiment, made cheaper, with a search block."""
    config["data"] = {"source": "synthetic", "params": {"train_size": 240, "test_size": 80}, "val_size": 40}
    config["stages"][0]["epochs"] = 1
    config["stages"][1]["epochs"] = 2
    config["tracking"]["log_model"] = False
    config["search"] = {
        "metric": "student/best.val.accuracy", "trials": 3, "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "space": {TEMPERATURE: {"float": [1, 8], "log": True}, "stages[1].batch_size": {"categorical": [16, 32]}},
        **search,
    }
    return config


def validated(config, plugins):
    return validate_document(Document("test", config), plugins.registry)


@pytest.fixture(scope="module")
def shared_uri(tmp_path_factory):
    """One MLflow store for this module's sweeps: its tables are made once (that takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def here(workdir, shared_uri, monkeypatch):
    """Run in a fresh folder (sweep journals, best.yaml) and log to the module's MLflow store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_uri)
    return workdir


def store() -> MlflowClient:
    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def runs_of(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def kind(runs, name):
    return [r for r in runs if r.data.tags.get("mentor.kind") == name]


def parent(run):
    return run.data.tags.get("mlflow.parentRunId")


def load_study(name: str, workdir: Path) -> optuna.Study:
    url = f"journal:{workdir}/mlruns/sweeps/{name}/journal.log"
    return optuna.load_study(study_name=name, storage=open_storage(url))


# --------------------------------------------------------------------------- the search block


def test_search_paths_and_specs_are_checked_with_located_errors(plugins, tiny_config, write_yaml):
    def problems(**search):
        path = write_yaml(small(tiny_config, **search))
        with pytest.raises(ConfigError) as err:
            load_experiment(path, registry=plugins.registry)
        return [str(p) for p in err.value.problems]

    [typo] = problems(space={"stages[1].losses[1].params.temprature": {"float": [1, 8]}})
    assert "search.space.stages[1].losses[1].params.temprature: no field 'temprature'" in typo
    assert "did you mean 'temperature'" in typo
    assert ".yaml:" in typo  # file:line:column
    line = int(typo.split(".yaml:")[1].split(":")[0])
    assert "temprature" in (Path(typo.split(":")[0])).read_text().splitlines()[line - 1]

    [index] = problems(space={"stages[4].epochs": {"int": [1, 3]}})
    assert "no item [4] in stages (it has 2" in index
    [bound] = problems(space={TEMPERATURE: {"float": [0, 8]}})
    assert "the value 0.0 is not valid here: Input should be greater than 0" in bound
    [fraction] = problems(space={"stages[1].epochs": {"float": [1, 4]}})
    assert "not valid here" in fraction and "integer" in fraction
    [two] = problems(space={TEMPERATURE: {"float": [1, 8], "int": [1, 8]}})
    assert "exactly one of float" in two
    [log] = problems(space={TEMPERATURE: {"float": [0, 8], "log": True}})
    assert "log scale needs low > 0" in log
    [metric] = problems(metric="studnt/best.val.accuracy")
    assert "search.metric: unknown stage 'studnt'; did you mean 'student'?" in metric
    [on_test] = problems(metric="student/best.test.accuracy")
    assert "would choose hyperparameters by the test set" in on_test
    assert "search on 'student/best.val.accuracy'" in on_test
    [pruner] = problems(pruner={"name": "medain"})
    assert "search.pruner: unknown pruner 'medain'; did you mean 'median'?" in pruner
    [grid] = problems(sampler={"name": "grid"})
    assert "grid sampler needs a step" in grid

    path = write_yaml(small(tiny_config))
    experiment = load_experiment(path, registry=plugins.registry)
    assert experiment.search.goal == "maximize" and experiment.search.epoch_metric == "val/accuracy"
    # list-valued choices are allowed (Optuna sees them as text)
    tiny_config["search"]["space"] = {"models.student.params.channels": {"categorical": [[4], [4, 8]]}}
    assert validated(tiny_config, plugins).search.space["models.student.params.channels"].categorical == [[4], [4, 8]]


def test_space_samples_within_its_specs_and_applies_to_the_config():
    specs = {
        "a.lr": ParamSpec.model_validate({"float": [0.001, 0.1], "log": True}),
        "a.epochs": ParamSpec.model_validate({"int": [2, 8], "step": 2}),
        "b[0].channels": ParamSpec.model_validate({"categorical": [[8, 16], [16, 32], None]}),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        values = space.sample(trial, specs)
        assert 0.001 <= values["a.lr"] <= 0.1
        assert values["a.epochs"] in (2, 4, 6, 8)
        assert values["b[0].channels"] in ([8, 16], [16, 32], None)
        seen.add(repr(values["b[0].channels"]))
        config = space.apply({"a": {"lr": 1.0, "epochs": 1}, "b": [{"channels": [1]}]}, values)
        assert config == {"a": {"lr": values["a.lr"], "epochs": values["a.epochs"]},
                          "b": [{"channels": values["b[0].channels"]}]}
        assert space.decoded(trial.params, specs) == values
        study.tell(trial, 0.0)
    assert len(seen) == 3
    assert space.grid({"x": ParamSpec.model_validate({"float": [0.1, 0.5], "step": 0.1})}) == {
        "x": [0.1, 0.2, 0.3, 0.4, 0.5]}
    assert space.grid_size(specs | {"a.lr": ParamSpec.model_validate({"categorical": [1, 2]})}) == 2 * 4 * 3
    assert space.mlflow_key("stages[2].losses[1].params.temperature") == "stages.2.losses.1.params.temperature"


def test_sweep_command_errors_exit_2(workdir, tiny_config, write_yaml, capsys):
    del tiny_config["stages"][1]["losses"]  # the file must load with the installed plugins only
    tiny_config["data"] = {"source": "fashion_mnist", "val_size": 100}
    plain = write_yaml(tiny_config, "plain.yaml")
    assert main(["sweep", str(plain)]) == 2
    assert "has no search block" in capsys.readouterr().err

    tiny_config["search"] = {"metric": "student/best.val.accuracy", "space": {"stages[1].epochs": {"int": [1, 2]}}}
    searched = write_yaml(tiny_config, "searched.yaml")
    url = "postgresql+psycopg2://mentor:secret@127.0.0.1:1/nowhere"
    assert main(["sweep", str(searched), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "cannot open study storage 'postgresql+psycopg2://mentor:***@127.0.0.1:1/nowhere'" in err
    assert "secret" not in err and "Traceback" not in err
    assert main(["sweep", str(searched), "--storage", "ftp:/x"]) == 2
    assert "unknown study storage" in capsys.readouterr().err
    assert not (workdir / "mlruns" / "mlflow.db").exists()  # nothing recorded for a sweep that never started

    tiny_config["search"]["space"] = {"stages[1].epoch": {"int": [1, 2]}}
    assert main(["validate", str(write_yaml(tiny_config, "bad.yaml"))]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


# --------------------------------------------------------------------------- sweeps in process


@pytest.mark.slow
def test_sweep_records_every_trial_under_one_sweep_run_and_resumes(here, plugins, tiny_config):
    experiment = validated(small(tiny_config), plugins)
    sweep = run_sweep(experiment, plugins)

    study = load_study("tiny", here)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)

    c = store()
    runs = runs_of(c, "tiny")
    [sweep_run] = kind(runs, "sweep")
    assert sweep_run.info.run_id == sweep.runs.run_id
    assert sweep_run.data.tags["mentor.study"] == "tiny"
    assert sweep_run.info.status == "FINISHED"
    trial_runs = {int(r.data.tags["mentor.trial"]): r for r in kind(runs, "trial")}
    assert sorted(trial_runs) == [0, 1, 2]
    experiments = kind(runs, "experiment")
    stages = kind(runs, "stage")
    assert len(experiments) == 3 and len(stages) == 6
    for t in trials:
        run = trial_runs[t.number]
        assert parent(run) == sweep_run.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["mentor.state"] == "COMPLETE"
        assert run.data.metrics["value"] == pytest.approx(t.value)
        assert float(run.data.params["stages.1.losses.1.params.temperature"]) == pytest.approx(t.params[TEMPERATURE])
        assert int(run.data.params["stages.1.batch_size"]) == t.params["stages[1].batch_size"]
        [exp_run] = [r for r in experiments if parent(r) == run.info.run_id]
        assert exp_run.data.tags["mentor.trial"] == str(t.number)
        # the experiment run is a normal one: resolved config with the sampled values
        assert float(exp_run.data.params["stages.1.losses.1.params.temperature"]) == pytest.approx(
            t.params[TEMPERATURE])
        assert "search" not in exp_run.data.params
        assert exp_run.data.metrics["student/best.val.accuracy"] == pytest.approx(t.value)
        [student] = [r for r in stages if parent(r) == exp_run.info.run_id and r.data.tags["mentor.stage"] == "student"]
        # the pruner heard every evaluated epoch of the metric's stage
        history = sorted(c.get_metric_history(student.info.run_id, "val/accuracy"), key=lambda m: m.step)
        assert t.intermediate_values == pytest.approx({i: m.value for i, m in enumerate(history)})
        assert len(history) == 2

    # the best trial as a ready-to-run file, on disk and on the sweep run
    best = study.best_trial
    assert sweep.best_path == Path("mlruns/sweeps/tiny/best.yaml")
    text = sweep.best_path.read_text()
    assert f"trial {best.number}" in text.splitlines()[0]
    again = load_experiment(sweep.best_path, registry=plugins.registry)
    assert again.search is None
    assert again.stages[1].losses[1].params["temperature"] == pytest.approx(best.params[TEMPERATURE])
    assert again.stages[1].batch_size == best.params["stages[1].batch_size"]
    artifacts = {a.path for a in c.list_artifacts(sweep_run.info.run_id)}
    assert {"best.yaml", "config.yaml", "plots"} <= artifacts
    plots = {a.path for a in c.list_artifacts(sweep_run.info.run_id, "plots")}
    assert plots == {"plots/optimization_history.png", "plots/param_importances.png",
                     "plots/intermediate_values.png"}
    assert c.get_run(sweep_run.info.run_id).data.metrics["best/value"] == pytest.approx(best.value)

    # the trial leaderboard, best first
    board = compare("tiny", level="trial", tracking_uri=c.tracking_uri)
    assert board["trial"].to_list() == [t.number for t in sorted(trials, key=lambda t: (-t.value, t.number))]
    assert board["rank"].to_list() == [1, 2, 3]
    assert board.schema["stages.1.batch_size"] == pl.Int64
    assert board.schema["stages.1.losses.1.params.temperature"] == pl.Float64
    assert set(board["study"]) == {"tiny"} and set(board["state"]) == {"COMPLETE"}

    # a worker killed hard (SIGKILL) left its trial RUNNING, with its MLflow run
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = study.ask()
    stale.set_user_attr("mentor.host", socket.gethostname())
    stale.set_user_attr("mentor.pid", int(dead.stdout))
    sweep.runs.start_trial(stale.number, {})

    # running again with a larger study: the dead worker's trial is failed and replaced, the new
    # trials join the same study and the same sweep run
    run_sweep(experiment, plugins, trials=4)
    study = load_study("tiny", here)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL, TrialState.COMPLETE]
    assert [t.params for t in study.get_trials()[:3]] == [t.params for t in trials]
    runs = runs_of(c, "tiny")
    assert [r.info.run_id for r in kind(runs, "sweep")] == [sweep_run.info.run_id]
    trial_runs = {int(r.data.tags["mentor.trial"]): r for r in kind(runs, "trial")}
    assert sorted(trial_runs) == [0, 1, 2, 3, 4]
    assert (trial_runs[3].info.status, trial_runs[3].data.tags["mentor.state"]) == ("KILLED", "FAIL")
    assert trial_runs[4].info.status == "FINISHED"
    assert {parent(r) for r in trial_runs.values()} == {sweep_run.info.run_id}
    # and a full study runs nothing more
    run_sweep(experiment, plugins, trials=4)
    assert len(load_study("tiny", here).trials) == 5
    assert len(kind(runs_of(c, "tiny"), "trial")) == 5

    # several experiments side by side
    tiny_config.pop("search")
    tiny_config["name"] = "tiny-b"
    tiny_config["stages"] = tiny_config["stages"][:1]
    run_experiment(validated(tiny_config, plugins), plugins)
    both = compare(["tiny", "tiny-b"], level="stage", tracking_uri=c.tracking_uri)
    assert both.columns[:3] == ["rank", "experiment", "stage"]
    assert both.height == 4 * 2 + 1 and set(both["experiment"]) == {"tiny", "tiny-b"}  # 4 complete trials
    assert both["rank"].to_list() == list(range(1, 10))
    values = both["value"].to_list()
    assert values == sorted(values, reverse=True)


@pytest.mark.slow
def test_pruned_trials_end_killed_in_mlflow_and_pruned_in_optuna(here, plugins, tiny_config):
    # accuracy never reaches 1.01: the first report prunes
    config = small(tiny_config, trials=1, pruner={"name": "threshold", "lower": 1.01})
    config["name"] = "tiny-pruned"
    sweep = run_sweep(validated(config, plugins), plugins, study_name="pruned")
    study = load_study("pruned", here)
    assert [t.state for t in study.trials] == [TrialState.PRUNED]
    assert all(list(t.intermediate_values) == [0] for t in study.trials)

    runs = runs_of(store(), "tiny-pruned")
    [run] = kind(runs, "trial")
    assert run.info.status == "KILLED"
    assert run.data.tags["mentor.state"] == "PRUNED"
    assert "value" not in run.data.metrics
    [exp_run] = [r for r in runs if parent(r) == run.info.run_id]
    assert exp_run.info.status == "KILLED"
    stages = {r.data.tags["mentor.stage"]: r.info.status for r in runs if parent(r) == exp_run.info.run_id}
    assert stages == {"teacher": "FINISHED", "student": "KILLED"}
    assert sweep.best_path is None and not Path("mlruns/sweeps/pruned/best.yaml").exists()
    [sweep_run] = kind(runs, "sweep")
    assert sweep_run.data.metrics["trials/pruned"] == 1


class InterruptOnce:
    """Ctrl-C during the first epoch it sees."""

    fired = False

    @hookimpl
    def on_epoch_end(self, stage, ctx, epoch, metrics):
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt


@pytest.mark.slow
def test_an_interrupted_sweep_goes_on_when_run_again(here, tiny_config):
    plugins = load_plugins(extra=[SyntheticData(), InterruptOnce()])
    config = small(tiny_config, trials=1)
    config["name"] = "tiny-stop"
    config["stages"] = config["stages"][:1]
    config["search"]["metric"] = "teacher/best.val.accuracy"
    config["search"]["space"] = {"stages[0].optimizer.lr": {"float": [0.01, 0.1], "log": True}}
    experiment = validated(config, plugins)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(experiment, plugins, study_name="stop")
    runs = runs_of(store(), "tiny-stop")
    [sweep_run], [trial_run], [exp_run] = kind(runs, "sweep"), kind(runs, "trial"), kind(runs, "experiment")
    assert (sweep_run.info.status, trial_run.info.status, exp_run.info.status) == ("KILLED",) * 3
    assert [t.state for t in load_study("stop", here).trials] == [TrialState.FAIL]

    run_sweep(experiment, plugins, study_name="stop")
    assert [t.state for t in load_study("stop", here).trials] == [TrialState.FAIL, TrialState.COMPLETE]
    runs = runs_of(store(), "tiny-stop")
    assert [r.info.run_id for r in kind(runs, "sweep")] == [sweep_run.info.run_id]
    assert store().get_run(sweep_run.info.run_id).info.status == "FINISHED"
    assert sorted(r.info.status for r in kind(runs, "trial")) == ["FINISHED", "KILLED"]


@pytest.mark.slow
def test_seeds_average_the_value(here, plugins, tiny_config):
    config = small(tiny_config, trials=1, seeds=[0, 1])
    config["name"] = "tiny-seeds"
    config["stages"] = config["stages"][:1]
    config["search"]["metric"] = "teacher/last.val.accuracy"
    config["search"]["space"] = {"stages[0].optimizer.lr": {"float": [0.01, 0.1], "log": True}}
    run_sweep(validated(config, plugins), plugins, study_name="seeds")
    [trial] = load_study("seeds", here).trials
    runs = runs_of(store(), "tiny-seeds")
    [trial_run] = kind(runs, "trial")
    experiments = [r for r in runs if parent(r) == trial_run.info.run_id]
    by_seed = {int(r.data.tags["mentor.seed"]): r.data.metrics["teacher/last.val.accuracy"] for r in experiments}
    assert sorted(by_seed) == [0, 1]
    assert trial.value == pytest.approx((by_seed[0] + by_seed[1]) / 2)
    assert trial_run.data.metrics["seed_1/teacher/last.val.accuracy"] == pytest.approx(by_seed[1])
    # each seed's steps continue the pruning axis: 1 epoch per seed
    assert list(trial.intermediate_values) == [0, 1]


# --------------------------------------------------------------------------- worker processes


FASHION_SWEEP = {
    "name": "fm-sweep",
    "data": {"source": "fashion_mnist", "val_size": 200, "test_size": 200},
    "models": {"s": {"name": "small_cnn", "params": {"channels": [4]}}},
    "stages": [{"name": "student", "kind": "train", "model": "s", "train_subset": 200, "epochs": 1,
                "batch_size": 50}],
    "engine": {"progress": "none"},
    "tracking": {"log_model": False},
    "search": {"metric": "student/best.val.accuracy", "trials": 3, "sampler": {"name": "random", "seed": 0},
               "pruner": {"name": "none"}, "space": {"stages[0].optimizer.lr": {"float": [0.01, 0.2], "log": True}}},
}


def mentor(*args, cwd, env=None, **kwargs):
    env = {**os.environ, "MENTOR_FASHION_MNIST_DIR": str(FASHION), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "mentor.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def finished(proc, timeout=240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def assert_recorded_once(study: optuna.Study, client: MlflowClient, experiment: str, target: int) -> None:
    """Every Optuna trial has exactly one MLflow trial run, under the one sweep run."""
    trials = study.get_trials()
    # two workers asking at the same instant may overshoot by one, never lose a trial
    assert target <= len(trials) <= target + 1
    assert all(t.state == TrialState.COMPLETE for t in trials)
    runs = runs_of(client, experiment)
    [sweep_run] = kind(runs, "sweep")
    trial_runs = [r for r in kind(runs, "trial") if r.data.tags["mentor.study"] == study.study_name]
    numbers = sorted(int(r.data.tags["mentor.trial"]) for r in trial_runs)
    assert numbers == [t.number for t in trials]  # each exactly once
    assert {parent(r) for r in trial_runs} == {sweep_run.info.run_id}
    values = {int(r.data.tags["mentor.trial"]): r.data.metrics["value"] for r in trial_runs}
    assert values == pytest.approx({t.number: t.value for t in trials})
    assert len(kind(runs, "experiment")) == len(trials)
    pids = {t.user_attrs["mentor.pid"] for t in trials}
    assert len(pids) == 2, "both workers took trials"


@needs_fashion
@pytest.mark.slow
def test_two_workers_share_a_journal_study(here, write_yaml, capsys):
    path = write_yaml(FASHION_SWEEP)
    out = finished(mentor("sweep", str(path), "--workers", "2", cwd=here))
    assert "best: trial" in out
    study = load_study("fm-sweep", here)
    assert_recorded_once(study, store(), "fm-sweep", 3)
    assert (here / "mlruns/sweeps/fm-sweep/best.yaml").is_file()

    assert main(["compare", "fm-sweep", "--level", "trial", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["trial"] for r in rows] == [t.number for t in sorted(study.trials, key=lambda t: (-t.value, t.number))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A reachable PostgreSQL: required where MENTOR_TEST_POSTGRES_URL names one (.ci/run starts it and
    sets it, so CI fails rather than skips when the server is missing), else tried on the default port
    and skipped when nothing answers (a developer's machine)."""
    required = "MENTOR_TEST_POSTGRES_URL" in os.environ
    url = os.environ.get("MENTOR_TEST_POSTGRES_URL", "postgresql+psycopg2://mentor:mentor@127.0.0.1:5432/mentor_test")
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        if required:
            pytest.fail(f"MENTOR_TEST_POSTGRES_URL names {masked(url)} but no PostgreSQL server answers there "
                        f"({type(exc).__name__}: {exc})", pytrace=False)
        pytest.skip(f"no PostgreSQL server at {masked(url)} ({type(exc).__name__}); "
                    "set MENTOR_TEST_POSTGRES_URL or run .ci/run, which starts one")
    return url


@pytest.fixture(scope="module", autouse=True)
def _server_booting(request, tmp_path_factory):
    """Start the `mlflow server` of the PostgreSQL test while the other tests run (it takes ~20 s
    to boot); only when that test was collected."""
    if not any(item.name.startswith("test_two_machines") for item in request.session.items):
        yield None
        return
    port = _free_port()
    root = tmp_path_factory.mktemp("server")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(_server_booting):
    """A real `mlflow server` on loopback with a sqlite backend, as several machines would log to."""
    proc, url = _server_booting
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return url
        except OSError:
            assert proc.poll() is None, "mlflow server exited"
            assert time.time() < deadline, "mlflow server did not answer within 120 s"
            time.sleep(0.5)


@pytest.mark.slow
def test_workers_opening_an_empty_postgres_database_together_all_get_the_storage(postgres_url):
    """Optuna creates its tables on first open; workers that race to do so must all succeed."""
    import sqlalchemy

    schema = f"race_{uuid.uuid4().hex[:8]}"  # an empty database of our own: a fresh schema
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    code = ("import sys, time; from mentor.search.storage import open_storage; "
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); "
            "s = open_storage(sys.argv[1]); print(len(s.get_all_studies()))")
    start = time.time() + 3  # every process imports first, then all open at the same moment
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code, url, str(start)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(4)]
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, outputs
        assert [o.strip().splitlines()[-1] for o in outputs] == ["0"] * 4
        with engine.connect() as conn:
            tables = conn.execute(sqlalchemy.text(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"), {"s": schema}).scalar()
        assert tables > 5  # Optuna's schema was created there, once
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@needs_fashion
@pytest.mark.slow
def test_two_machines_share_a_postgres_study_and_an_mlflow_server(workdir, write_yaml, postgres_url,
                                                                  mlflow_server):
    path = write_yaml(FASHION_SWEEP)
    study = f"pg-{uuid.uuid4().hex[:8]}"
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    # two independent `mentor sweep` processes, as on two machines, started together
    args = ("sweep", str(path), "--storage", postgres_url, "--study", study, "--set", "search.sampler.seed=null")
    procs = [mentor(*args, cwd=workdir, env=env) for _ in range(2)]
    for proc in procs:
        finished(proc)
    loaded = optuna.load_study(study_name=study, storage=open_storage(postgres_url))
    try:
        assert_recorded_once(loaded, MlflowClient(tracking_uri=mlflow_server), "fm-sweep", 3)
        assert not (workdir / "mlruns" / "mlflow.db").exists()  # everything went to the server
    finally:
        optuna.delete_study(study_name=study, storage=open_storage(postgres_url))
