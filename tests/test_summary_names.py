"""Summary metric names: dotted (so MLflow files their charts after the curves), the older slash form
still understood where a user types one (search.metric, compare --metric) or a resumed run reads one."""

from __future__ import annotations

import json

import pytest

from mentor import StageResult, summary_name
from mentor.config import load_experiment
from mentor.summary import canonical, split_summary
from mentor.tracking.compare import _metric_keys


def test_names_by_hand():
    assert summary_name("best", "val/accuracy") == "best.val.accuracy"
    assert summary_name("kept", "epoch") == "kept.epoch"
    assert canonical("best/test/loss") == "best.test.loss"
    assert canonical("kept/epoch") == "kept.epoch"
    assert canonical("val/accuracy") == "val/accuracy"  # a curve stays a curve
    assert canonical("model/parameters") == "model/parameters"
    assert split_summary("last.val.loss") == ("last", "val/loss")
    assert split_summary("best/val/accuracy") == ("best", "val/accuracy")
    assert split_summary("val/accuracy") is None and split_summary("best.") is None


def test_compare_takes_either_form():
    assert _metric_keys("test/accuracy", "best") == ("best.test.accuracy", "test/accuracy")
    assert _metric_keys("last/val/loss", "best") == ("last.val.loss", "val/loss")
    assert _metric_keys("kept.test.accuracy", "last") == ("kept.test.accuracy", "test/accuracy")


@pytest.mark.parametrize("metric", ["student/best/val/accuracy", "student/best.val.accuracy"])
def test_search_metric_in_either_form_is_read_as_logged(write_yaml, tiny_config, plugins, metric):
    tiny_config["search"] = {"metric": metric, "space": {"stages[1].optimizer.lr": {"float": [0.01, 0.1]}}}
    search = load_experiment(write_yaml(tiny_config), registry=plugins.registry).search
    assert (search.metric, search.stage, search.summary_key, search.epoch_metric) == (
        "student/best.val.accuracy", "student", "best.val.accuracy", "val/accuracy")


def test_search_on_the_test_set_is_refused_with_the_val_name(write_yaml, tiny_config, plugins):
    from mentor.config import ConfigError

    tiny_config["search"] = {"metric": "student/kept.test.accuracy",
                             "space": {"stages[1].optimizer.lr": {"float": [0.01, 0.1]}}}
    with pytest.raises(ConfigError) as err:
        load_experiment(write_yaml(tiny_config), registry=plugins.registry)
    assert "search on 'student/kept.val.accuracy'" in str(err.value)


def test_a_result_written_with_slash_names_loads_with_dotted_ones(tmp_path):
    """A run started before the rename resumes: its finished stages' results read in today's names."""
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"stage": "t", "kind": "train", "metrics": {"best/val/accuracy": 0.5,
                                                                           "kept/epoch": 3, "model/size_mb": 1.0}}))
    assert StageResult.load(path).metrics == {"best.val.accuracy": 0.5, "kept.epoch": 3, "model/size_mb": 1.0}
