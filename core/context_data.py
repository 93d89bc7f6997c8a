"""A stage's data and what is computed from it: the training split, batches, augmentation by the data's
modality, scores of a split or a pool, evaluation, and the caches shared by stages, runs and sweep trials.

``StageContext`` inherits this (with ``ModelBuilding`` and ``Recording``); it needs the context's ``stage``,
``experiment``, ``state``, ``splits``, ``info``, ``registry``, ``runtime``, ``device``, ``seed``, ``tracker``
and ``run_id``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch
from torch import nn

from .config.schema import TrainingConfig
from .context_cache import TeacherCaching
from .data.loader import Batches
from .data.splits import balanced_subset
from .data.types import ImageSet
from .engine import distributed
from .engine.loop import evaluate
from .modality import Modality, modality_of
from .model_input import ModelInput, own_pipeline


class DataAndCaches(TeacherCaching):
    """The data side of ``StageContext``: what a method trains and scores on, and the shared caches."""

    def training_data(self, cfg: TrainingConfig | None = None) -> ImageSet:
        """The labeled split, or the stage's class-balanced ``train_subset`` of it."""
        cfg = cfg or self.stage
        data = self.splits.labeled
        n = getattr(cfg, "train_subset", None)
        if n is not None:
            if n > len(data):
                raise self.config_error(("stages", self.index, "train_subset"),
                                        f"{n} is more than the {len(data)} labeled training {self.info.noun}")
            data = data.subset(balanced_subset(data.labels, n, self.experiment.data.split_seed))
        return data

    def augment_config(self, cfg: TrainingConfig | None = None):
        """The augmentation a training config asks for: its own ``augment``, or ``data.augment``."""
        cfg = cfg or self.stage
        return cfg.augment or self.experiment.data.augment

    @property
    def modality(self) -> Modality:
        """The data's modality (``DataInfo.modality``): what its examples are and how they are augmented."""
        if self.state.modality is None:
            self.state.modality = modality_of(self.registry, self.info)
        return self.state.modality

    def consistency_views(self, strong=None, cfg: TrainingConfig | None = None):
        """The weak and strong views of unlabeled batches for a consistency method, by the data's modality
        (``Modality.consistency_views``): ``strong`` is the stage's strong-augmentation setting (num_ops,
        magnitude, cutout), or None for two weak views (Mean Teacher)."""
        return self.modality.consistency_views(self.augment_config(cfg), strong, self.info)

    def augmenter(self, cfg: TrainingConfig | None = None):
        """The training batches' augmentation ``cfg`` asks for, by the data's modality (None: none)."""
        return self.modality.augmenter(self.augment_config(cfg), self.info)

    def batches(self, data, batch_size: int, *, shuffle: bool = False, **kwargs) -> Batches:
        """``Batches`` of ``data`` normalised with the data's statistics, on this stage's device."""
        return Batches(data, batch_size, shuffle=shuffle, mean=self.info.mean, std=self.info.std,
                       device=self.device, placement=self.runtime.data_placement,
                       workers=self.runtime.loader_workers, **kwargs)

    def example(self, data: ImageSet | None = None, n: int = 2, *, pipeline: ModelInput | None = None) -> torch.Tensor:
        """A batch of ``n`` training images in the data's form (or as ``pipeline`` takes them), for probing."""
        data = data if data is not None else self.splits.labeled
        rows = torch.arange(min(n, len(data)))
        images = data.subset(rows).images
        images = images if isinstance(images, torch.Tensor) else images[torch.arange(len(rows))]  # a pool: read
        if pipeline is not None:
            return pipeline.from_raw(images)
        batches = Batches(data.subset(rows), n, shuffle=False, mean=self.info.mean, std=self.info.std)
        return next(iter(batches))[0]

    def score(self, model: nn.Module, data, *, top_p: int, batch_size: int = 1024) -> pl.DataFrame:
        """The scores table (``mentor.SCORES_SCHEMA``) of ``model`` over ``data``, un-augmented, in eval mode."""
        from .pseudo_labels import score

        return score(model, data, top_p=top_p, batch_size=batch_size, mean=self.info.mean, std=self.info.std,
                     runtime=self.runtime)

    def unlabeled_pool(self):
        """The ``data.unlabeled`` pool (a ``mentor.ImagePool``), or None: the unlabeled split is then
        ``splits.unlabeled``, the labeled source's remainder."""
        spec = self.experiment.data.unlabeled
        if spec is None:
            return None
        if self.state.pool is None:
            self.state.pool = self.registry.get("unlabeled_source", spec.source).build(**spec.params)
        return self.state.pool

    def score_pool(self, model: nn.Module, pool, *, top_p: int, batch_size: int = 1024, name: str = "scores",
                   teacher: str = "", log_table: bool = True, chunk_size: int = 50_000):
        """The teacher's scores of ``pool`` (a ``ScoresTable``; ``.scan()`` reads it lazily).

        The table lives in ``tracking.cache_dir``, keyed by the teacher's weights,
        the pool's fingerprint and the settings: a later stage, run or sweep trial
        with the same three reuses it, an interrupted scoring resumes (see
        mentor.pool_scores). This stage's run gets the table's key and record
        (``<name>/meta.json``), the chunks themselves under ``<name>/`` unless
        ``log_table`` is false, the skipped files and ``pool/*`` metrics.
        """
        from .pool_scores import score_pool

        table = score_pool(model, pool, self.cache_root() / "scores",
                           channels=self.info.in_channels, size=self.info.image_size, top_p=top_p,
                           batch_size=batch_size, mean=self.info.mean, std=self.info.std, runtime=self.runtime,
                           chunk_size=chunk_size, teacher=teacher, pipeline=own_pipeline(model, self.info))
        skipped = table.skipped()
        self.log_table(skipped, f"{name}/skipped.csv")
        done = "read the table an earlier stage, run or trial scored for" if table.reused else "scored"
        self.say(f"{name}: {done} {len(pool):,} files of the pool; {len(skipped):,} could not be read"
                 + (f" (listed in the run's {name}/skipped.csv)" if len(skipped) else ""))
        self.tracker.log_dict(self.run_id, table.meta, f"{name}/meta.json")
        if log_table:
            for chunk in table.chunks:
                self.tracker.log_file(self.run_id, chunk, name)
        self.tracker.set_tags(self.run_id, {"mentor.scores.key": table.meta["key"],
                                            "mentor.scores.reused": str(table.reused).lower()})
        self.log_metrics({"pool/skipped": float(len(skipped)), "pool/size": float(len(pool))})
        return table

    def cache_root(self) -> Path:
        """Where tables and caches shared by stages, runs and sweep trials live (``tracking.cache_dir``)."""
        return Path(self.experiment.tracking.cache_dir)

    def evaluate(self, model: nn.Module, batch_size: int = 1024) -> dict[str, float]:
        """``val/accuracy``, ``val/loss``, ``test/accuracy``, ``test/loss`` of ``model``, un-augmented,
        as the training loop measures them (an empty split gives no entries)."""
        metrics = {}
        rank, world = distributed.group_rank(), distributed.world_size()
        for split, data in (("val", self.splits.val), ("test", self.splits.test)):
            if len(data):  # under torchrun each rank scores its part; evaluate() adds the parts up
                part = data if world == 1 else data.subset(distributed.split(len(data), rank, world))
                found = evaluate(model, self.batches(part, batch_size), self.runtime)
                metrics.update({f"{split}/{k}": v for k, v in found.items()})
        return metrics

    def pseudo_label_diagnostics(self, scores: pl.DataFrame, selection: pl.DataFrame):
        """Precision, coverage and per-class counts of a selection, against the hidden labels.

        Computed here in the core, so that methods never hold those labels.
        """
        from .pseudo_labels import diagnostics

        return diagnostics(scores, selection, self.state.splits)
