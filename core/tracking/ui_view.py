"""The view `mentor ui` opens: the experiment's stage runs grouped by stage, with their summary columns.

MLflow 3's UI keeps a runs table's layout (columns, filter, grouping) in the
browser, and opens a fresh one with no metric columns and every stage run
folded under its parent. It also reads a layout from an experiment tag
``mlflow.sharedViewState.<key>`` when the address carries
``viewStateShareKey=<key>`` (its "share view" feature). mentor writes such a
tag on each experiment it records into, so that the address `mentor ui`
prints opens the stage runs grouped by stage (one row per seed or trial, the
group row their average), ranked in run order, with the kept and last
accuracies beside them.
"""

from __future__ import annotations

import json

VIEW_KEY = "mentor"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"

COLUMNS = ["metrics.`kept.val.accuracy`", "metrics.`kept.test.accuracy`", "metrics.`last.test.accuracy`",
           "metrics.`kept.epoch`", "tags.`mentor.method`", "tags.`mentor.model`"]


def runs_view() -> str:
    """The tag's value: the UI's search facets and table state, as JSON."""
    return json.dumps({
        "searchFilter": "tags.`mentor.kind` = 'stage'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": COLUMNS,
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "mentor.stage"}]},
    }, sort_keys=True)


def publish_runs_view(client, experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Write the view tag on the experiment unless it is already there as it should be."""
    value = runs_view()
    if (tags or {}).get(VIEW_TAG) != value:
        client.set_experiment_tag(experiment_id, VIEW_TAG, value)


def ui_url(base: str, experiment_id: str | None = None) -> str:
    """The address to open: an experiment's runs in the view above, in the UI's model-training mode
    (MLflow 3 otherwise opens on its GenAI traces overview)."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")
