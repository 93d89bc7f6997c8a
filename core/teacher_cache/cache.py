"""``TeacherCache``: what a training step reads instead of running its teacher.

For a batch of training rows in epoch ``e``, ``views`` (handed to the loop as
``TrainTask.views``) rebuilds each row's recorded view of that epoch, and
``outputs(rows, e)`` returns the teacher's stored logits and features for the
same views. The arrays stay memory-mapped on the host (the OS pages in what
is read); on a GPU they are copied to the device when they take at most
``DEVICE_SHARE`` of its free memory, so a step reads them without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.augment import AugmentDraw, BatchAugment
from ..data.loader import DEVICE_SHARE
from ..data.views import RecordedViews
from .files import ArrayFile


@dataclass
class TeacherCache:
    """A complete teacher cache, opened for one stage (``views`` carries the stage's view order)."""

    folder: Path
    meta: dict  # the folder's meta.json: key, record, origin, arrays; plus reused and built_seconds
    views: RecordedViews
    arrays: dict[str, torch.Tensor]  # role -> [V, N, ...], memory-mapped (or on the device)
    device: torch.device

    @classmethod
    def open(cls, folder: Path, meta: dict, arrays: dict[str, ArrayFile], augment: BatchAugment,
             draws: AugmentDraw, count: int, stage_seed: int, device: torch.device) -> TeacherCache:
        n = meta["record"]["data"]["count"]
        tensors = {role: torch.from_numpy(a.map(folder)) for role, a in arrays.items()}
        if device.type == "cuda":
            size = sum(t.numel() * t.element_size() for t in tensors.values())
            free, _ = torch.cuda.mem_get_info(device)
            if size <= DEVICE_SHARE * free:
                tensors = {role: t.to(device) for role, t in tensors.items()}
        views = RecordedViews.for_stage(augment, draws, count, n, stage_seed)
        return cls(folder, meta, views, tensors, device)

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def reused(self) -> bool:
        return bool(self.meta.get("reused"))

    @property
    def nodes(self) -> list[str]:
        return list(self.meta["record"]["nodes"])

    def outputs(self, rows: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The teacher's logits (float32 ``[B, C]``) and features for ``rows``' views of ``epoch``, on the device."""
        home = next(iter(self.arrays.values())).device
        rows_home = rows.to(home)
        views = self.views.view_of(rows, epoch).to(home)

        def read(role: str) -> torch.Tensor:
            return self.arrays[role][views, rows_home].to(self.device, non_blocking=True).float()

        if "logits" in self.arrays:
            logits = read("logits")
        else:  # top-k: the k stored logits, the others at their stored mean
            values, rest = read("top_values"), read("rest_mean")
            classes = self.arrays["top_classes"][views, rows_home].to(self.device).long()
            logits = rest[:, None].repeat(1, self.meta["record"]["classes"])
            logits.scatter_(1, classes, values)
        features = {node: read(f"feature:{node}") for node in self.nodes}
        return logits, features
