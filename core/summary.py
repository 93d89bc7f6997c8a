"""Names of the summary metrics a stage reports once it ends: ``best.val.accuracy``, ``kept.test.loss``,
``last.val.accuracy``, ``best.epoch``, ``kept.epoch``.

Why dots: MLflow's run page files a metric's chart under the part of its name before the last ``/``
(sections sorted by name) and puts names without a ``/`` last. The curves are ``val/accuracy``,
``train/loss``, ``step/train/loss``...; named ``best/val/accuracy``, their one-value summaries would
open the page above them. With dots they are columns in the runs table and come after the curves.
The slash form (``best/val/accuracy``, as mentor 0.1 logged them) is still understood where a name is
typed or read back.
"""

from __future__ import annotations

#: best: the epoch that scored best on ``select_on``; last: the last epoch; kept: the weights handed on.
KINDS = ("best", "last", "kept")


def summary_name(kind: str, metric: str) -> str:
    """``summary_name("best", "val/accuracy")`` -> ``"best.val.accuracy"``."""
    return f"{kind}.{metric.replace('/', '.')}"


def canonical(name: str) -> str:
    """A summary name as logged: the slash form (``best/val/accuracy``) becomes ``best.val.accuracy``;
    any other name is returned as it is."""
    head, sep, rest = name.partition("/")
    return summary_name(head, rest) if sep and head in KINDS and rest else name


def split_summary(name: str) -> tuple[str, str] | None:
    """``"best.val.accuracy"`` -> ``("best", "val/accuracy")``; None for a name that is not a summary."""
    head, sep, rest = canonical(name).partition(".")
    return (head, rest.replace(".", "/")) if sep and head in KINDS and rest else None
