"""One rank of a torchrun job running ``mentor run`` for tests/test_ddp.py (pytest does not collect it).

    python -m torch.distributed.run --nproc_per_node 2 --standalone tests/ddp_run.py \
        EXPERIMENT.yaml OUT [--resume] [--stop STAGE:EPOCH]

The tests' synthetic data source is registered in-process (no entry point
needed); ``--stop`` interrupts the run like Ctrl-C after that epoch. Each rank
writes ``OUT/rank<r>.pt``: the rows its training batches held, and per fit
its history and kept weights (the best epoch's) as they are in this rank's memory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mentor.cli  # noqa: E402
import mentor.context  # noqa: E402
import mentor.plugins  # noqa: E402
from mentor import hookimpl  # noqa: E402
from mentor.data.loader import Batches  # noqa: E402
from tests.conftest import SyntheticData  # noqa: E402


class StopAt:
    def __init__(self, stage: str, epoch: int):
        self.stage, self.epoch = stage, epoch

    @hookimpl
    def on_epoch_end(self, stage, ctx, epoch, metrics):
        if stage.name == self.stage and epoch == self.epoch:
            raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    config, out, *rest = argv
    extra: list = [SyntheticData()]
    if "--stop" in rest:
        stage, epoch = rest[rest.index("--stop") + 1].split(":")
        extra.append(StopAt(stage, int(epoch)))
    mentor.plugins.default_plugins = lambda: mentor.plugins.load_plugins(extra=extra)

    record: dict = {"batches": [], "fits": {}}
    epoch_of_batches = Batches.epoch
    rows_of = Batches.batch_rows

    def epoch(self, e):  # training batches only: note which epoch the rows belong to
        if self.shuffle:
            record["batches"].append({"n": len(self.images), "epoch": e, "order": self.order(e).tolist(),
                                      "rows": []})
        return epoch_of_batches(self, e)

    def batch_rows(self, order, i):
        rows = rows_of(self, order, i)
        if self.shuffle:
            record["batches"][-1]["rows"].append(rows.tolist())
        return rows

    Batches.epoch, Batches.batch_rows = epoch, batch_rows
    fit = mentor.context.fit

    def recording_fit(task, cfg, *, stage, **kwargs):
        result = fit(task, cfg, stage=stage, **kwargs)
        kept = result.best_state if result.best_state is not None else task.model.state_dict()  # keep: best
        record["fits"][stage] = {"history": result.history,
                                 "weights": {k: v.detach().cpu().clone() for k, v in kept.items()}}
        return result

    mentor.context.fit = recording_fit
    try:
        return mentor.cli.main(["run", config, *(["--resume"] if "--resume" in rest else [])])
    finally:
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save(record, Path(out) / f"rank{os.environ.get('RANK', '0')}.pt")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
