"""How a global batch (or a whole set) is cut between processes under torchrun.

Pure functions of their arguments, here in the data layer so that batching
needs nothing from the engine; ``mentor.engine.distributed`` uses them too.
"""

from __future__ import annotations

import torch


def shard(rows: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's equal contiguous part of a global batch of ``rows``.

    When ``len(rows)`` is not a multiple of ``world_size``, it is first padded
    by repeating its own rows from the start (as ``DistributedSampler`` does), so
    every rank gets the same number of rows and takes the same number of steps.
    """
    if world_size == 1:
        return rows
    n = len(rows)
    if n == 0:
        return rows
    per = -(-n // world_size)
    if per * world_size != n:
        rows = rows.repeat(-(-per * world_size // n))[:per * world_size]
    return rows[rank * per:(rank + 1) * per]


def split(n: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous part of ``range(n)``, without padding (parts differ by at most one row).

    For evaluation: every row is counted exactly once over the ranks.
    """
    bounds = [n * r // world_size for r in range(world_size + 1)]
    return torch.arange(bounds[rank], bounds[rank + 1])
