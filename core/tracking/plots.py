"""Figures for MLflow: learning curves and confusion matrices.

Everything here uses matplotlib's object-oriented API with an explicit Agg canvas, so no
display is ever needed, the global pyplot state is left alone and nothing is shown. Callers
log a figure with ``mlflow.log_figure(fig, "plots/x.png")`` and may then ``plt.close(fig)``
(a no-op for figures pyplot does not manage, so always safe).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["confusion_matrix", "confusion_matrix_figure", "learning_curves"]

#: Up to this many classes every cell of a confusion matrix carries its count.
MAX_ANNOTATED_CLASSES = 20
#: Up to this many classes every class gets a tick label; above it, every k-th one.
MAX_TICK_LABELS = 50


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attach the Agg canvas: rendering never needs a display
    return fig


def _as_float(value: Any) -> float | None:
    """A finite float for ``value`` (number, 0-d tensor, numpy scalar), else None."""
    if value is None:
        return None
    try:
        out = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return out if math.isfinite(out) else None


def _last_part(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _is_loss(key: str) -> bool:
    return _last_part(key).endswith("loss")


def _is_accuracy(key: str) -> bool:
    return _last_part(key).endswith("accuracy")


def _plot_keys(ax: Any, history: Sequence[Mapping[str, Any]], xs: list[float],
               keys: list[str], ylabel: str, title: str) -> None:
    for key in keys:
        points = [(x, _as_float(row.get(key))) for x, row in zip(xs, history, strict=True)]
        points = [(x, y) for x, y in points if y is not None]
        if not points:
            continue
        px, py = zip(*points, strict=True)
        ax.plot(px, py, marker="o" if len(points) <= 30 else None, markersize=3, label=key)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                color="grey")


def learning_curves(history: list[dict[str, float]], references: Mapping[str, float] | None = None) -> Figure:
    """Loss and accuracy panels, and the learning rate's if logged, against the 1-based epoch.

    ``history`` holds one dict per epoch, e.g. ``{"epoch": 0, "train/loss": 1.2,
    "val/accuracy": 0.5, "test/accuracy": 0.49, "lr": 0.1}`` (``epoch`` 0-based, drawn
    as epoch + 1, as the terminal counts). The loss panel shows every key whose last
    ``/``-part ends in ``loss`` (``train/loss``, ``val/loss``, ``train/loss/kd``), the
    accuracy panel every key whose last part ends in ``accuracy``, with each of
    ``references`` (e.g. ``{"teacher test/accuracy": 0.91}``) as a dashed line.
    Missing, None or non-finite values are skipped (a metric evaluated only every few
    epochs still draws). Without an ``"epoch"`` key the row index is used.
    """
    history = list(history)
    xs: list[float] = []
    for i, row in enumerate(history):
        epoch = _as_float(row.get("epoch"))
        xs.append((float(i) if epoch is None else epoch) + 1)

    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys and k != "epoch")
    loss_keys = [k for k in keys if _is_loss(k)]
    acc_keys = [k for k in keys if _is_accuracy(k)]
    # train/loss first, then the rest in order of appearance
    loss_keys.sort(key=lambda k: k != "train/loss")
    with_lr = any(_as_float(row.get("lr")) is not None for row in history)

    fig = _new_figure(16.0 if with_lr else 11.0, 4.0)
    axes = fig.subplots(1, 3 if with_lr else 2)
    _plot_keys(axes[0], history, xs, loss_keys, "loss", "Loss")
    for i, (label, value) in enumerate((references or {}).items()):
        axes[1].axhline(value, linestyle="--", linewidth=1, color=f"C{len(acc_keys) + i}", label=label)
    _plot_keys(axes[1], history, xs, acc_keys, "accuracy", "Accuracy")
    if with_lr:
        _plot_keys(axes[2], history, xs, ["lr"], "learning rate", "Learning rate (start of epoch)")
    return fig


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (true, predicted) pairs: ``cm[i, j]`` = samples of class i predicted as j.

    ``y_pred`` may be class indices shaped like ``y_true`` or scores with one more trailing
    dimension of size ``num_classes`` (argmax is taken). Returns an int64 ``(C, C)`` tensor on
    the inputs' device.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    y_true = torch.as_tensor(y_true)
    y_pred = torch.as_tensor(y_pred)
    if y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == num_classes:
        y_pred = y_pred.argmax(dim=-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape, got {tuple(y_true.shape)} "
            f"and {tuple(y_pred.shape)}"
        )
    t = y_true.reshape(-1).long()
    p = y_pred.reshape(-1).to(t.device).long()
    if t.numel():
        lo = min(int(t.min()), int(p.min()))
        hi = max(int(t.max()), int(p.max()))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"class indices must lie in [0, {num_classes}), got [{lo}, {hi}]")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def confusion_matrix_figure(cm: torch.Tensor, class_names: list[str] | None = None) -> Figure:
    """Row-normalised heat map of a confusion matrix (rows = true class).

    The colour of a cell is the fraction of its true class; with at most
    ``MAX_ANNOTATED_CLASSES`` classes each cell also shows its raw count.
    """
    counts = torch.as_tensor(cm).detach().to("cpu", torch.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"cm must be a square 2-d matrix, got shape {tuple(counts.shape)}")
    n = counts.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(n)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for a {n}x{n} confusion matrix")

    row_sums = counts.sum(dim=1, keepdim=True)
    norm = torch.where(row_sums > 0, counts / row_sums.clamp(min=1), torch.zeros_like(counts))

    longest = max((len(c) for c in class_names), default=1)
    side = min(max(4.0, 0.45 * n + 2.0 + 0.06 * min(longest, 30)), 18.0)
    fig = _new_figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(norm.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")

    step = max(1, math.ceil(n / MAX_TICK_LABELS))
    ticks = list(range(0, n, step))
    fontsize = 10 if n <= 10 else 8 if n <= 20 else 6
    ax.set_xticks(ticks, [class_names[i] for i in ticks], fontsize=fontsize)
    ax.set_yticks(ticks, [class_names[i] for i in ticks], fontsize=fontsize)
    if n > 5 or longest > 3:
        for label in ax.get_xticklabels():
            label.set_rotation(45)
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(counts.sum().item())
    correct = int(counts.diagonal().sum().item())
    accuracy = correct / total if total else float("nan")
    ax.set_title(f"Confusion matrix (row-normalised), n={total}, accuracy={accuracy:.4f}")

    if n <= MAX_ANNOTATED_CLASSES:
        cell_font = 9 if n <= 10 else 7
        for i in range(n):
            for j in range(n):
                value = int(counts[i, j].item())
                colour = "white" if norm[i, j].item() > 0.5 else "black"
                ax.text(j, i, str(value), ha="center", va="center", color=colour,
                        fontsize=cell_font)
    return fig


def confidence_histogram(scored: Any, selected: Any, bins: int = 20) -> Figure:
    """Teacher confidence (top-1 probability) over all scored images and over the selected rows.

    ``scored`` is an array of confidences, or a scores table (polars, lazy or
    not): then its rank-0 rows are counted per bin by polars, never loaded whole.
    """
    import numpy as np
    import polars as pl

    fig = _new_figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    if isinstance(scored, pl.DataFrame | pl.LazyFrame):
        counts = (scored.lazy().filter(pl.col("rank") == 0)
                  .select(bin=(pl.col("prob") * bins).floor().clip(0, bins - 1).cast(pl.Int64))
                  .group_by("bin").agg(n=pl.len()).collect())
        weights = np.zeros(bins)
        weights[counts["bin"].to_numpy()] = counts["n"].to_numpy()
        ax.hist(edges[:-1], bins=edges, weights=weights, alpha=0.6, label=f"scored ({int(weights.sum())})")
    else:
        ax.hist(np.asarray(scored, dtype=float), bins=edges, alpha=0.6, label=f"scored ({len(scored)})")
    ax.hist(np.asarray(selected, dtype=float), bins=edges, alpha=0.6, label=f"selected ({len(selected)})")
    ax.set_xlabel("teacher confidence")
    ax.set_ylabel("images")
    ax.set_title("pseudo-label confidence")
    ax.legend(loc="upper left")
    return fig
