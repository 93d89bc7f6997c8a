"""mentor.tracking.compare and mentor.tracking.plots against a real (sqlite) MLflow store."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import mlflow
import polars as pl
import pytest
import torch
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils

from mentor.tracking import compare, plots

EXPERIMENT = "kd-cifar10"

# parent run name -> [(stage, method, model, per-epoch metrics, write summary metrics?, status)]
PLAN = {
    "run-a": [
        ("teacher", "train", "resnet18",
         {"train/loss": [1.5, 0.8, 0.6], "val/accuracy": [0.62, 0.82, 0.79],
          "test/accuracy": [0.60, 0.80, 0.78]}, True, "FINISHED"),
        ("student", "distill", "resnet8",
         {"train/loss": [2.0, 1.1, 0.9], "val/accuracy": [0.55, 0.71, 0.74],
          "test/accuracy": [0.50, 0.70, 0.72]}, True, "FINISHED"),
    ],
    "run-b": [
        ("teacher", "train", "resnet18",
         {"train/loss": [1.2, 0.7, 0.5], "val/accuracy": [0.71, 0.86, 0.84],
          "test/accuracy": [0.70, 0.85, 0.83]}, True, "FINISHED"),
        ("student", "distill", "resnet8",
         {"train/loss": [1.9, 1.0, 0.8], "val/accuracy": [0.61, 0.76, 0.75],
          "test/accuracy": [0.60, 0.75, 0.74]}, True, "FINISHED"),
        # crashed before writing its summary: leaderboards fall back to the latest value
        ("finetune", "train", "resnet8",
         {"train/loss": [0.7, 0.6], "val/accuracy": [0.78, 0.79],
          "test/accuracy": [0.76, 0.77]}, False, "FAILED"),
    ],
}


def _summary(curves: dict[str, list[float]]) -> dict[str, float]:
    val, test = curves["val/accuracy"], curves["test/accuracy"]
    best = max(range(len(val)), key=val.__getitem__)
    return {"best.val.accuracy": val[best], "best.test.accuracy": test[best],
            "best.epoch": float(best), "last.val.accuracy": val[-1],
            "last.test.accuracy": test[-1]}


@dataclass
class Store:
    uri: str
    parents: dict[str, str] = field(default_factory=dict)  # parent name -> run id
    stages: dict[tuple[str, str], str] = field(default_factory=dict)  # (parent, stage) -> id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    previous = tracking_utils._tracking_uri
    with pytest.MonkeyPatch.context() as mp:  # restores MLFLOW_TRACKING_URI afterwards
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            yield _populate(uri, root)
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(previous)


def _populate(uri: str, root) -> Store:
    out = Store(uri)
    exp_id = mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "art").as_uri())
    mlflow.create_experiment("other-experiment", artifact_location=(root / "other").as_uri())
    for parent_name, stages in PLAN.items():
        with mlflow.start_run(experiment_id=exp_id, run_name=parent_name,
                              tags={"mentor.kind": "experiment"}) as parent:
            out.parents[parent_name] = parent.info.run_id
            mlflow.log_param("stages.1.epochs", 3)
            for stage, method, model, curves, summary, status in stages:
                tags = {"mentor.kind": "stage", "mentor.stage": stage, "mentor.method": method,
                        "mentor.model": model}
                run = mlflow.start_run(experiment_id=exp_id, run_name=stage, nested=True,
                                       tags=tags)
                out.stages[parent_name, stage] = run.info.run_id
                for epoch in range(len(curves["test/accuracy"])):
                    mlflow.log_metrics({k: v[epoch] for k, v in curves.items()}, step=epoch)
                if summary:
                    mlflow.log_metrics(_summary(curves))
                mlflow.end_run(status=status)
    return out


# --------------------------------------------------------------------------- runs_table


def test_runs_table_rows_columns_and_parents(store: Store):
    df = compare.runs_table(EXPERIMENT, tracking_uri=store.uri)
    assert df.height == 2 + 5
    assert df.columns[:10] == ["run_id", "parent_run_id", "run_name", "kind", "stage", "method",
                               "model", "status", "start_time", "duration_s"]
    assert {"train/loss", "val/accuracy", "test/accuracy", "best.test.accuracy",
            "last.test.accuracy", "best.epoch"} <= set(df.columns)
    assert df.schema["start_time"] == pl.Datetime("us", "UTC")
    assert df.schema["test/accuracy"] == pl.Float64

    rows = {r["run_id"]: r for r in df.iter_rows(named=True)}
    for name, run_id in store.parents.items():
        assert rows[run_id]["kind"] == "experiment"
        assert rows[run_id]["run_name"] == name
        assert rows[run_id]["parent_run_id"] is None
        assert rows[run_id]["test/accuracy"] is None
    for (parent, stage), run_id in store.stages.items():
        row = rows[run_id]
        curves = _curves(parent, stage)
        assert row["parent_run_id"] == store.parents[parent]
        assert (row["kind"], row["stage"], row["run_name"]) == ("stage", stage, stage)
        # the latest value (highest step), not the maximum
        assert row["test/accuracy"] == pytest.approx(curves["test/accuracy"][-1])
        assert row["train/loss"] == pytest.approx(curves["train/loss"][-1])
        assert row["duration_s"] is not None and row["duration_s"] >= 0
    teacher_a = rows[store.stages["run-a", "teacher"]]
    assert (teacher_a["method"], teacher_a["model"]) == ("train", "resnet18")
    assert teacher_a["best.test.accuracy"] == pytest.approx(0.80)
    assert teacher_a["test/accuracy"] == pytest.approx(0.78)
    assert rows[store.stages["run-b", "finetune"]]["status"] == "FAILED"
    assert rows[store.stages["run-b", "finetune"]]["best.test.accuracy"] is None


def _curves(parent: str, stage: str) -> dict[str, list[float]]:
    return next(p[3] for p in PLAN[parent] if p[0] == stage)


def test_runs_table_uses_the_global_tracking_uri(store: Store):
    df = compare.runs_table(EXPERIMENT)
    assert set(df["run_id"]) == set(store.parents.values()) | set(store.stages.values())


def test_unknown_experiment_suggests_a_name(store: Store):
    with pytest.raises(ValueError, match=r"no MLflow experiment named 'kd-cifar1O'") as err:
        compare.runs_table("kd-cifar1O", tracking_uri=store.uri)
    assert "did you mean 'kd-cifar10'" in str(err.value)
    assert "other-experiment" in str(err.value)
    assert store.uri in str(err.value)
    with pytest.raises(ValueError, match="did you mean 'kd-cifar10'"):
        compare.leaderboard("kd_cifar10", tracking_uri=store.uri)


# --------------------------------------------------------------------------- leaderboard


def test_stage_leaderboard_by_best(store: Store):
    board = compare.leaderboard(EXPERIMENT, tracking_uri=store.uri)
    order = [("run-b", "teacher"), ("run-a", "teacher"), ("run-b", "finetune"),
             ("run-b", "student"), ("run-a", "student")]
    assert board["run_id"].to_list() == [store.stages[k] for k in order]
    assert board["value"].to_list() == pytest.approx([0.85, 0.80, 0.77, 0.75, 0.72])
    assert board["rank"].to_list() == [1, 2, 3, 4, 5]
    assert board["stage"].to_list() == ["teacher", "teacher", "finetune", "student", "student"]
    assert board["method"].to_list() == ["train", "train", "train", "distill", "distill"]
    assert board["model"].to_list() == ["resnet18", "resnet18", "resnet8", "resnet8", "resnet8"]
    assert board.columns == ["rank", "stage", "method", "model", "value", "best.val.accuracy",
                             "best.test.accuracy", "last.test.accuracy", "status", "run_id",
                             "parent_run_id", "parent_run_name", "parent", "start_time"]
    assert board["best.val.accuracy"].to_list()[:2] == pytest.approx([0.86, 0.82])
    assert board["last.test.accuracy"].to_list()[:2] == pytest.approx([0.83, 0.78])
    assert board["best.test.accuracy"][2] is None  # the crashed finetune stage
    assert board["status"][2] == "FAILED"
    assert board["parent_run_id"].to_list() == [store.parents[p] for p, _ in order]
    assert board["parent_run_name"].to_list() == [p for p, _ in order]
    assert board["parent"][0] == f"{store.parents['run-b'][:8]} run-b"


def test_stage_leaderboard_by_last_and_other_metric(store: Store):
    board = compare.leaderboard(EXPERIMENT, by="last", tracking_uri=store.uri)
    assert board["value"].to_list() == pytest.approx([0.83, 0.78, 0.77, 0.74, 0.72])
    assert board["parent_run_name"].to_list() == ["run-b", "run-a", "run-b", "run-b", "run-a"]

    val = compare.leaderboard(EXPERIMENT, metric="val/accuracy", tracking_uri=store.uri)
    assert val["value"].to_list() == pytest.approx([0.86, 0.82, 0.79, 0.76, 0.74])

    # a full summary name is taken as is
    full = compare.leaderboard(EXPERIMENT, metric="last.test.accuracy", tracking_uri=store.uri)
    assert full["value"].to_list() == board["value"].to_list()


def test_leaderboard_errors(store: Store):
    with pytest.raises(ValueError, match="available: .*test/accuracy") as err:
        compare.leaderboard(EXPERIMENT, metric="test/f1", tracking_uri=store.uri)
    assert "train/loss" in str(err.value)
    with pytest.raises(ValueError, match="by must be"):
        compare.leaderboard(EXPERIMENT, by="worst", tracking_uri=store.uri)
    with pytest.raises(ValueError, match="level must be"):
        compare.leaderboard(EXPERIMENT, level="trial", tracking_uri=store.uri)


def test_experiment_level_pivot(store: Store):
    board = compare.leaderboard(EXPERIMENT, level="experiment", tracking_uri=store.uri)
    assert board.columns == ["rank", "run_name", "value", "teacher", "student", "finetune",
                             "kind", "status", "run_id", "start_time"]
    # ordered by the final stage: run-b's finetune (0.77, fallback) beats run-a's student (0.72)
    assert board["run_name"].to_list() == ["run-b", "run-a"]
    assert board["run_id"].to_list() == [store.parents["run-b"], store.parents["run-a"]]
    assert board["rank"].to_list() == [1, 2]
    assert board["value"].to_list() == pytest.approx([0.77, 0.72])
    assert board["teacher"].to_list() == pytest.approx([0.85, 0.80])
    assert board["student"].to_list() == pytest.approx([0.75, 0.72])
    assert board["finetune"].to_list() == [pytest.approx(0.77), None]
    assert board["kind"].to_list() == ["experiment", "experiment"]

    last = compare.leaderboard(EXPERIMENT, level="experiment", by="last", tracking_uri=store.uri)
    assert last["teacher"].to_list() == pytest.approx([0.83, 0.78])


# --------------------------------------------------------------------------- render


def test_render_csv_json_and_table(store: Store):
    board = compare.leaderboard(EXPERIMENT, tracking_uri=store.uri)

    back = pl.read_csv(io.StringIO(compare.render(board, "csv")))
    assert back.height == board.height
    assert back["run_id"].to_list() == board["run_id"].to_list()
    assert back["value"].to_list() == board["value"].to_list()
    assert back["best.test.accuracy"].to_list() == board["best.test.accuracy"].to_list()

    rows = json.loads(compare.render(board, "json"))
    assert isinstance(rows, list) and len(rows) == board.height
    assert rows[0]["run_id"] == store.stages["run-b", "teacher"]
    assert rows[0]["value"] == pytest.approx(0.85)
    assert rows[2]["best.test.accuracy"] is None

    text = compare.render(board, "table")
    assert isinstance(text, str)
    for name in ("rank", "stage", "value", "best.test.accuracy", "parent"):
        assert name in text
    assert "0.8500" in text and "0.7700" in text
    assert "0.85000" not in text  # four decimals
    for run_id in board["run_id"]:
        assert run_id in text  # nothing truncated
    lines = [line for line in text.splitlines() if store.stages["run-a", "student"] in line]
    assert len(lines) == 1 and lines[0].split()[:2] == ["5", "student"]

    with pytest.raises(ValueError, match="unknown format"):
        compare.render(board, "xml")


def test_render_table_shows_every_row():
    df = pl.DataFrame({"i": list(range(60)), "x": [i / 7 for i in range(60)]})
    text = compare.render(df)
    assert f"{59 / 7:.4f}" in text
    assert sum(1 for line in text.splitlines() if line.strip()[:1].isdigit()) == 60


# --------------------------------------------------------------------------- plots


def test_learning_curves_panels_carry_the_values():
    history = [
        {"epoch": 0, "train/loss": 1.5, "val/accuracy": 0.6, "test/accuracy": 0.58, "lr": 0.1},
        {"epoch": 1, "train/loss": 0.9, "train/kd_loss": 0.4, "val/accuracy": 0.7,
         "test/accuracy": 0.69, "lr": 0.05},
        {"epoch": 2, "train/loss": 0.7, "train/kd_loss": 0.3, "val/accuracy": 0.75,
         "test/accuracy": 0.74, "lr": 0.01},
    ]
    fig = plots.learning_curves(history, {"teacher (t) test/accuracy": 0.8})
    try:
        assert isinstance(fig, Figure)
        assert len(fig.axes) == 3
        loss_ax, acc_ax, lr_ax = fig.axes
        loss = {line.get_label(): line for line in loss_ax.get_lines()}
        acc = {line.get_label(): line for line in acc_ax.get_lines()}
        assert set(loss) == {"train/loss", "train/kd_loss"}
        assert set(acc) == {"val/accuracy", "test/accuracy", "teacher (t) test/accuracy"}
        assert list(acc["teacher (t) test/accuracy"].get_ydata()) == [0.8, 0.8]  # a horizontal line
        assert list(loss["train/loss"].get_xdata()) == [1, 2, 3]  # epochs 1-based, as the terminal counts
        assert list(loss["train/loss"].get_ydata()) == pytest.approx([1.5, 0.9, 0.7])
        assert list(lr_ax.get_lines()[0].get_ydata()) == pytest.approx([0.1, 0.05, 0.01])
        fig.canvas.draw()
        assert all(float(t).is_integer() for t in loss_ax.get_xticks())  # no fractional epoch ticks
        # missing epochs are skipped, not drawn as zero
        assert list(loss["train/kd_loss"].get_xdata()) == [2, 3]
        assert list(acc["test/accuracy"].get_ydata()) == pytest.approx([0.58, 0.69, 0.74])
        assert loss_ax.get_xlabel() == "epoch"
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert buf.getvalue().startswith(b"\x89PNG")
    finally:
        plt.close(fig)


def test_learning_curves_logs_to_mlflow(store: Store):
    fig = plots.learning_curves([{"epoch": 0, "train/loss": 1.0, "val/accuracy": 0.5}])
    run_id = store.stages["run-a", "teacher"]
    with mlflow.start_run(run_id=run_id):
        mlflow.log_figure(fig, "plots/learning_curves.png")
    plt.close(fig)
    artifacts = MlflowClient(store.uri).list_artifacts(run_id, "plots")
    assert [a.path for a in artifacts] == ["plots/learning_curves.png"]


def test_confusion_matrix_hand_computed():
    y_true = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    y_pred = torch.tensor([0, 1, 1, 1, 2, 0, 2])
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    cm = plots.confusion_matrix(y_true, y_pred, 3)
    assert cm.dtype == torch.int64
    assert torch.equal(cm, expected)
    assert int(cm.sum()) == len(y_true)
    # scores are argmaxed
    logits = torch.nn.functional.one_hot(y_pred, 3).float() * 5 - 1
    assert torch.equal(plots.confusion_matrix(y_true, logits, 3), expected)
    # a class never seen still gets its row and column
    assert torch.equal(plots.confusion_matrix(y_true, y_pred, 4)[:3, :3], expected)
    with pytest.raises(ValueError, match="class indices"):
        plots.confusion_matrix(y_true, torch.tensor([0, 1, 1, 1, 2, 0, 3]), 3)
    with pytest.raises(ValueError, match="same shape"):
        plots.confusion_matrix(y_true, y_pred[:-1], 3)


def test_confusion_matrix_figure_renders_png():
    cm = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    fig = plots.confusion_matrix_figure(cm, ["cat", "dog", "airplane"])
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "airplane"]
        counts = sorted(str(v) for v in cm.flatten().tolist())
        assert sorted(t.get_text() for t in ax.texts) == counts
        image = ax.get_images()[0].get_array()
        assert image[0].tolist() == pytest.approx([0.5, 0.5, 0.0])  # row-normalised
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert buf.getvalue().startswith(b"\x89PNG")
    finally:
        plt.close(fig)

    big = plots.confusion_matrix_figure(torch.eye(30, dtype=torch.long) * 3, None)
    try:
        assert len(big.axes[0].texts) == 0  # no per-cell counts above 20 classes
        big.savefig(io.BytesIO(), format="png")
    finally:
        plt.close(big)
    with pytest.raises(ValueError, match="class names"):
        plots.confusion_matrix_figure(cm, ["a", "b"])


def test_empty_experiment(store: Store):
    df = compare.runs_table("other-experiment", tracking_uri=store.uri)
    assert df.height == 0
    assert df.columns == list(compare.BASE_SCHEMA)
    assert compare.leaderboard("other-experiment", tracking_uri=store.uri).height == 0
    board = compare.leaderboard("other-experiment", level="experiment", tracking_uri=store.uri)
    assert board.height == 0
    assert "rank" in compare.render(board)


# --------------------------------------------------------------------------- the CLI's table view


def _cli(store: Store, capsys, monkeypatch, *args, columns: int = 200) -> tuple[int, str, str]:
    from mentor.cli import main

    monkeypatch.setenv("COLUMNS", str(columns))
    code = main(["compare", EXPERIMENT, "--tracking-uri", store.uri, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compare_ranks_by_validation_by_default_and_names_the_metric(store: Store, capsys, monkeypatch):
    code, out, _ = _cli(store, capsys, monkeypatch)
    assert code == 0
    header, table = out.splitlines()[0], out.splitlines()[1:]
    assert header == "ranked by best.val.accuracy (at the epoch of best validation)"
    assert "best.val.accuracy" in table[0] and " value " not in f" {table[0]} "
    first = [line.split() for line in table if line.strip().startswith("1 ")][0]
    assert first[1:3] == ["teacher", "train"] and "0.8600" in first  # run-b's teacher: best val 0.86


def test_compare_fits_a_narrow_terminal_and_says_what_it_left_out(store: Store, capsys, monkeypatch):
    code, out, _ = _cli(store, capsys, monkeypatch, "--metric", "test/accuracy", columns=80)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("ranked by best.test.accuracy")
    assert all(len(line) <= 80 for line in lines[1:-1])
    assert lines[-1].startswith("(not shown: ") and "start_time" in lines[-1] and "--wide" in lines[-1]
    _, wide, _ = _cli(store, capsys, monkeypatch, "--wide", columns=80)
    assert "start_time" in wide and "not shown" not in wide


def test_compare_columns_picks_and_refuses_an_unknown_one(store: Store, capsys, monkeypatch):
    code, out, _ = _cli(store, capsys, monkeypatch, "--columns", "rank,stage,best.val.accuracy")
    assert code == 0
    assert out.splitlines()[1].split() == ["rank", "stage", "best.val.accuracy"]
    code, _, err = _cli(store, capsys, monkeypatch, "--columns", "rank,stagee")
    assert code == 2 and "no column 'stagee'" in err
