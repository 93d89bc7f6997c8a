"""A stage's teacher cache: found, resumed or built for a frozen teacher, and recorded on the stage's run.

``DataAndCaches`` (context_data.py) inherits this, and ``StageContext`` it; it needs the
context's ``stage``, ``experiment``, ``info``, ``runtime``, ``seed``, ``dir``, ``tracker`` and ``run_id``, and its
``augment_config``, ``example`` and ``cache_root`` (docs/teacher_cache.md).
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from .config.schema import TrainingConfig, exact_cache
from .data.augment import BatchAugment
from .data.types import ImageSet
from .engine import checkpoint, distributed
from .features import probe
from .model_input import own_pipeline
from .teacher_cache import TeacherCache, open_cache


class TeacherCaching:
    """``cached_teacher`` of ``StageContext``."""

    def cached_teacher(self, teacher: nn.Module, config, *, data: ImageSet, nodes: list[str] | tuple = (),
                       cfg: TrainingConfig | None = None, label: str = "") -> TeacherCache | None:
        """The teacher's outputs over recorded augmented views of ``data`` (a ``mentor.TeacherCache``), or None.

        ``config`` is a stage's ``teacher_cache:``: a ``TeacherCacheConfig``;
        None (off); or ``"auto"``: one view stored in float32 (exactly the live
        teacher's outputs) when ``cfg``'s augmentation is off, else off.
        ``nodes`` are the teacher features a loss reads. The cache lives in
        ``tracking.cache_dir``, keyed by the teacher's weights, ``data``'s
        images, the augmentation and the settings: found, resumed after a kill,
        or built here (the teacher runs once per view and image). None, with
        the reason printed and tagged on the stage's run
        (``mentor.teacher_cache``), also when the teacher must run live: the
        cache would exceed ``max_gb``, or a node's output is not one tensor.

        Use: ``TrainTask(views=cache.views, ...)`` on data whose targets are row
        numbers (``ImageSet(data.images, torch.arange(len(data)))``), and in the
        step ``cache.outputs(rows, epoch)`` for the teacher's logits and features
        of exactly the views the batch shows.
        """
        cfg = cfg or self.stage
        augment_cfg = self.augment_config(cfg)
        augment = self.augmenter(cfg) or BatchAugment()  # none: every view is the example itself
        if config == "auto":
            config = None if getattr(augment, "active", True) else exact_cache()
        if config is None:
            return None
        nodes = list(dict.fromkeys(nodes))
        cache, shapes, missing = None, {}, []
        if isinstance(data.images, torch.Tensor) and nodes:
            shapes = probe(teacher, self.example(data), nodes)
            missing = [node for node in nodes if node not in shapes]
        if not isinstance(data.images, torch.Tensor):
            reason = "the training images are read from files (a pool), not held in memory"
        elif missing:
            reason = f"the teacher's node {missing[0]!r} does not output one tensor"
        else:
            cache = open_cache(
                teacher, data.images, config=config, augment=augment,
                augment_record=augment_cfg.model_dump(mode="json"), nodes=nodes,
                feature_shapes={node: tuple(shape[1:]) for node, shape in shapes.items()},
                classes=self.info.num_classes, root=self.cache_root() / "teacher",
                origin=f"{self.experiment.name}/{self.stage.name}", teacher_label=label, mean=self.info.mean,
                std=self.info.std, runtime=self.runtime, batch_size=self._build_batch(cfg), stage_seed=self.seed,
                pipeline=own_pipeline(teacher, self.info))
            if isinstance(cache, str):
                reason, cache = cache, None
        if cache is None:
            print(f"[{self.stage.name}] teacher cache off, the teacher runs live: {reason}", file=sys.stderr)
            self.tracker.set_tags(self.run_id, {"mentor.teacher_cache": f"live: {reason}"[:5000]})
            return None
        self._record_cache(cache)
        return cache

    def _build_batch(self, cfg: TrainingConfig) -> int:
        """The teacher's batch while it builds: the evaluation batch on a GPU; on the CPU the training batch,
        the live step's own, since a larger one's activations are handed back to the system and faulted in
        again at every forward (resnet32x4: 17.5 ms an image at 1,024 against 11.0 at 64, same outputs)."""
        return cfg.eval_batch_size if self.runtime.device.type == "cuda" else cfg.batch_size

    def _record_cache(self, cache: TeacherCache) -> None:
        """The cache's identity on the stage's run. What the stage found when it first began is kept in its
        folder (``teacher_cache.json``), so that a resumed stage records the same (not "reused", its own build)."""
        first = self.dir / "teacher_cache.json"
        outcome = {"key": cache.key, "reused": cache.reused, "built_seconds": cache.meta.get("built_seconds")}
        try:
            earlier = json.loads(first.read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier is not None and earlier.get("key") == cache.key:
            outcome = earlier
        elif distributed.is_main():
            checkpoint.write_text_atomic(json.dumps(outcome), first)
        record = cache.meta["record"]
        self.tracker.set_tags(self.run_id, {"mentor.teacher_cache": "on",
                                            "mentor.teacher_cache.key": cache.key,
                                            "mentor.teacher_cache.reused": str(outcome["reused"]).lower(),
                                            "mentor.teacher_cache.views": str(record["views"])})
        self.tracker.log_dict(self.run_id, {k: v for k, v in cache.meta.items() if k != "reused"},
                              "teacher_cache/meta.json")
        if not outcome["reused"] and outcome.get("built_seconds") is not None:
            self.log_metrics({"teacher_cache.build_seconds": float(outcome["built_seconds"])})
