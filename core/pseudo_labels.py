"""Pseudo-labels: a teacher's scores as a table, and how good a selection is.

Scoring keeps only each image's top-P classes (long format: one row per image
and rank), so memory is bounded by N x P however many classes there are.
The diagnostics compare a selection with the unlabeled split's hidden labels
here, in the core: methods get images and indices, never those labels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl
import torch
from torch import nn

from .data.loader import Batches
from .data.splits import Splits, UnlabeledImages, UnlabeledSet
from .engine.runtime import Runtime, autocast
from .tables import SCORES_SCHEMA


@torch.no_grad()
def score(model: nn.Module, data: UnlabeledSet | UnlabeledImages, *, top_p: int, batch_size: int, mean, std,
          runtime: Runtime) -> pl.DataFrame:
    """The teacher's top-P classes and probabilities for every image of ``data``.

    The model runs in eval mode, without augmentation, in batches on the device.
    """
    model.eval()
    batches = Batches(data, batch_size, shuffle=False, mean=mean, std=std, device=runtime.device,
                      placement=runtime.data_placement, workers=runtime.loader_workers)
    indices, classes, probs = [], [], []
    for x, index in batches.epoch(0):
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(runtime):
            logits = model(x)
        p, c = logits.float().softmax(1).topk(min(top_p, logits.shape[1]), dim=1)
        indices.append(index.cpu())
        classes.append(c.cpu())
        probs.append(p.cpu())
    if not indices:
        return pl.DataFrame(schema=SCORES_SCHEMA)
    index = torch.cat(indices)
    c = torch.cat(classes)
    p = torch.cat(probs)
    k = c.shape[1]
    return pl.DataFrame({
        "index": index.repeat_interleave(k).numpy(),
        "rank": torch.arange(k).repeat(len(index)).numpy(),
        "class": c.reshape(-1).numpy(),
        "prob": p.reshape(-1).numpy(),
    }, schema=SCORES_SCHEMA)


def soft_targets(scores: pl.DataFrame | pl.LazyFrame, index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[len(index), C] targets: each image's top-P probabilities, renormalised to sum to 1.

    A lazy ``scores`` (a table on disk) is read for the rows of ``index`` only."""
    rows = pl.DataFrame({"index": index.numpy(), "row": range(len(index))}, schema={"index": pl.Int64, "row": pl.Int64})
    joined = rows.lazy().join(scores.lazy().select("index", "class", "prob"), on="index", how="inner").collect()
    targets = torch.zeros(len(index), num_classes)
    targets[torch.from_numpy(joined["row"].to_numpy()), torch.from_numpy(joined["class"].to_numpy()).long()] = (
        torch.from_numpy(joined["prob"].to_numpy()))
    return targets / targets.sum(1, keepdim=True).clamp_min(1e-12)


def diagnostics(scores: pl.DataFrame, selection: pl.DataFrame, splits: Splits) -> tuple[dict[str, float], pl.DataFrame]:
    """Aggregate metrics and a per-class table for a selection, against the hidden labels.

    precision: share of selected rows whose label is the true class; coverage:
    share of unlabeled images selected at least once; per class: how many rows
    were selected with that label, how many were right, and which share of the
    class's unlabeled images got it.
    """
    classes = splits.info.num_classes
    unlabeled = splits.unlabeled
    truth = pl.DataFrame({"index": unlabeled.index.numpy(), "true": splits.reveal_labels(unlabeled.index).numpy()},
                         schema={"index": pl.Int64, "true": pl.Int32})
    top = scores.filter(pl.col("rank") == 0).join(truth, on="index")
    selected = selection.join(truth, on="index", how="left").with_columns(correct=pl.col("label") == pl.col("true"))
    n_unlabeled = max(len(truth), 1)
    metrics = {
        "pseudo/selected_rows": float(len(selection)),
        "pseudo/selected_images": float(selection["index"].n_unique()) if len(selection) else 0.0,
        "pseudo/coverage": (selection["index"].n_unique() if len(selection) else 0) / n_unlabeled,
        "pseudo/precision": float(selected["correct"].mean()) if len(selected) else 0.0,
        "pseudo/teacher_accuracy": float((top["class"] == top["true"]).mean()) if len(top) else 0.0,
        "pseudo/mean_confidence": float(selection["prob"].mean()) if len(selection) else 0.0,
        "pseudo/classes_covered": float(selection["label"].n_unique()) if len(selection) else 0.0,
    }
    base = pl.DataFrame({"class": list(range(classes))}, schema={"class": pl.Int32})
    per_label = selected.group_by("label").agg(selected=pl.len(), correct=pl.col("correct").sum(),
                                               images=pl.col("index").n_unique())
    per_true = truth.group_by("true").agg(unlabeled=pl.len())
    hits = (selected.filter(pl.col("correct")).group_by("label")
            .agg(true_images=pl.col("index").n_unique()))
    table = (base.join(per_label.rename({"label": "class"}), on="class", how="left")
             .join(per_true.rename({"true": "class"}), on="class", how="left")
             .join(hits.rename({"label": "class"}), on="class", how="left")
             .fill_null(0)
             .with_columns(precision=pl.when(pl.col("selected") > 0).then(pl.col("correct") / pl.col("selected")),
                           coverage=pl.when(pl.col("unlabeled") > 0)
                           .then(pl.col("true_images") / pl.col("unlabeled")))
             .sort("class"))
    return metrics, table


def class_key(label: int, class_names: Sequence[str] = ()) -> str:
    """A class in a metric's name: its name where the data has one (characters MLflow refuses, and ``/``,
    become ``_``), else its number."""
    if 0 <= label < len(class_names):
        return re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(class_names[label])) or str(label)
    return str(label)


def pool_diagnostics(scores: pl.DataFrame | pl.LazyFrame, selection: pl.DataFrame,
                     num_classes: int | None = None,
                     class_names: Sequence[str] = ()) -> tuple[dict[str, float], pl.DataFrame]:
    """What a truly unlabeled pool tells without labels, read lazily from the scores table.

    Metrics: the selection's size, images, classes and mean confidence; the
    pool's scored images and top-1 confidence distribution (mean, p10, p50,
    p90); per class, the selected rows. The table: per class, how many scored
    images have it as top-1 (and which share), how many rows were selected
    with it, and their mean confidence.
    """
    top = scores.lazy().filter(pl.col("rank") == 0)
    stats = top.select(n=pl.len(), mean=pl.col("prob").mean(), p10=pl.col("prob").quantile(0.1),
                       p50=pl.col("prob").quantile(0.5), p90=pl.col("prob").quantile(0.9)).collect().row(0, named=True)
    top1 = (top.group_by("class").agg(top1_images=pl.len()).rename({"class": "label"})
            .with_columns(pl.col("label").cast(pl.Int32)).collect())
    chosen = selection.group_by("label").agg(selected=pl.len(), mean_prob=pl.col("prob").mean())
    labels = set(top1["label"].to_list()) | set(chosen["label"].to_list())
    if num_classes is not None:
        labels |= set(range(num_classes))
    base = pl.DataFrame({"label": sorted(labels)}, schema={"label": pl.Int32})
    scored = max(stats["n"], 1)
    table = (base.join(top1, on="label", how="left").join(chosen.with_columns(pl.col("label").cast(pl.Int32)),
                                                          on="label", how="left")
             .with_columns(pl.col("top1_images").fill_null(0), pl.col("selected").fill_null(0))
             .with_columns(top1_share=pl.col("top1_images") / scored)
             .select("label", "top1_images", "top1_share", "selected", "mean_prob").sort("label"))
    metrics = {
        "pseudo/selected_rows": float(len(selection)),
        "pseudo/selected_images": float(selection["index"].n_unique()) if len(selection) else 0.0,
        "pseudo/mean_confidence": float(selection["prob"].mean()) if len(selection) else 0.0,
        "pseudo/classes_covered": float(selection["label"].n_unique()) if len(selection) else 0.0,
        "pool/scored_images": float(stats["n"]),
    }
    if stats["n"]:
        metrics.update({f"pool/confidence_{k}": float(stats[k]) for k in ("mean", "p10", "p50", "p90")})
    metrics.update({f"pseudo/class_{class_key(r['label'], class_names)}/selected": float(r["selected"])
                    for r in table.to_dicts() if r["selected"]})
    if class_names:  # the table a person reads: each class by its name too
        names = [str(class_names[r]) if 0 <= r < len(class_names) else str(r) for r in table["label"].to_list()]
        table = table.with_columns(pl.Series("class_name", names)).select(
            "label", "class_name", *[c for c in table.columns if c != "label"])
    return metrics, table
