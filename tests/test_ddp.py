"""Several processes (torchrun, DDP on CPU with gloo): sharding, recording once, identical ranks, resume.

The sharding logic is checked in-process with explicit rank/world_size; the
rest launches real 2-process runs of ``mentor run`` (tests/ddp_run.py).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from mentor.config import validate_document
from mentor.config.document import Document
from mentor.data.augment import BatchAugment
from mentor.data.loader import Batches
from mentor.data.types import ImageSet
from mentor.engine import distributed
from mentor.engine.loop import TrainTask, data_parallel, evaluate
from mentor.engine.runtime import Runtime
from mentor.pipeline import ExperimentRunner
from mentor.plugins import load_plugins

from .conftest import TINY, SyntheticData, synthetic_images

WORKER = Path(__file__).with_name("ddp_run.py")


def batches(data, bs, rank=0, world=1, **kw):
    return Batches(data, bs, shuffle=True, mean=(0.3,), std=(0.3,), seed=7, rank=rank, world_size=world, **kw)


def test_ranks_take_disjoint_shards_that_make_one_process_batches():
    data = ImageSet(synthetic_images(37, 0).images, torch.arange(37))  # labels = row numbers
    one = batches(data, 8, drop_last=True)  # a single process with the global batch
    ranks = [batches(data, 4, r, 2, drop_last=True) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == 4
    for epoch in range(3):
        order = one.order(epoch)
        assert all(torch.equal(b.order(epoch), order) for b in ranks)  # the same permutation everywhere
        for i in range(len(one)):
            parts = [b.batch_rows(order, i) for b in ranks]
            assert len(parts[0]) == len(parts[1]) == 4
            assert not set(parts[0].tolist()) & set(parts[1].tolist())
            assert torch.equal(torch.cat(parts), one.batch_rows(order, i))
        seen = [y for b in ranks for _, y in b.epoch(epoch)]
        assert len(torch.cat(seen).unique()) == 32  # 4 steps x 8 rows, no row twice


def test_uneven_data_gives_every_rank_the_same_steps():
    data = synthetic_images(5, 0)
    ranks = [batches(data, 4, r, 2) for r in range(2)]  # 5 rows < one global batch of 8: one padded step
    steps = [[y for _, y in b.epoch(0)] for b in ranks]
    assert [len(s) for s in steps] == [1, 1]
    assert [len(s[0]) for s in steps] == [3, 3]
    order = ranks[0].order(0)
    assert torch.cat([ranks[0].batch_rows(order, 0), ranks[1].batch_rows(order, 0)]).unique().numel() == 5
    assert distributed.shard(torch.arange(3), 3, 4).tolist() == [0]  # fewer rows than ranks: wrapped
    parts = [distributed.split(10, r, 3) for r in range(3)]  # evaluation: each row once, no padding
    assert torch.equal(torch.cat(parts), torch.arange(10)) and [len(p) for p in parts] == [3, 3, 4]
    with pytest.raises(ValueError, match="rank 2 is not one of world_size 2"):
        batches(data, 4, 2, 2)


def test_augmentation_differs_by_rank_and_rank_0_draws_as_one_process():
    data = ImageSet(torch.full((16, 1, 8, 8), 200, dtype=torch.uint8), torch.zeros(16, dtype=torch.long))
    aug = BatchAugment(crop_padding=2, flip=True)
    x_one = next(batches(data, 8, augment=aug).epoch(0))[0]
    x0 = next(batches(data, 8, 0, 2, augment=aug).epoch(0))[0]
    x1 = next(batches(data, 8, 1, 2, augment=aug).epoch(0))[0]
    assert torch.equal(x0, x_one)  # identical images, so only the draws can differ
    assert not torch.equal(x0, x1)


def test_one_process_helpers_change_nothing():
    assert distributed.world_size() == 1 and distributed.is_main() and not distributed.active()
    obj = {"run": "abc"}
    assert distributed.broadcast(obj) is obj and distributed.on_main(lambda: 3) == 3
    assert distributed.rank_seed(123) == 123
    t = torch.ones(3)
    assert distributed.all_reduce_sum(t) is t
    with distributed.group(torch.device("cpu")) as device:
        assert device == torch.device("cpu")


def _mpl_step_on_two_ranks(rank: int, rendezvous: str, out: str) -> None:
    """One MPL step, in one process on the whole batch (rank 0), then on 2 ranks with half of it each."""
    import torch.distributed as dist
    from torch import nn

    from mentor_plugins.mpl_config import MPLStage, UDAConfig
    from mentor_plugins.mpl_step import MetaPseudoLabels

    g = torch.Generator().manual_seed(0)
    x_l, y_l = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(3, (8,), generator=g)
    x_uw = torch.randn(6, 4, generator=g, dtype=torch.float64)
    x_us = x_uw + 0.3 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    forced = torch.randint(3, (6,), generator=g)

    def step(labels: str, part: slice, u: slice) -> torch.Tensor:
        torch.manual_seed(1)
        teacher = nn.Linear(4, 3).double()
        student = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
        options = MPLStage(student="s", teacher="t", labels=labels, uda=UDAConfig(ramp_steps=1, threshold=0.3))
        mpl = MetaPseudoLabels(teacher, student, torch.optim.SGD(teacher.parameters(), lr=0.1),
                               torch.optim.SGD(student.parameters(), lr=0.5), options)
        for _ in range(2):  # the second step also uses the moving baseline of the first h
            mpl.step(x_l[part], y_l[part], x_uw[u], x_us[u], labels=None if labels == "soft" else forced[u])
        return torch.cat([p.detach().reshape(-1) for m in (teacher, student) for p in m.parameters()])

    kinds = ("soft", "sampled")
    one = {k: step(k, slice(None), slice(None)) for k in kinds} if rank == 0 else {}
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        two = {k: step(k, slice(4 * rank, 4 * rank + 4), slice(3 * rank, 3 * rank + 3)) for k in kinds}
        task = TrainTask(model=nn.Linear(4, 3), step=lambda x, y: (x.sum(), {}), data=None, manual=True)
        try:  # a manual task that does not average its gradients is refused, not run drifting apart
            data_parallel(task, task.step, Runtime(torch.device("cpu"), None, False, False, "none"))
            refused = ""
        except ValueError as exc:
            refused = str(exc)
        if rank == 0:
            torch.save({"one": one, "two": two, "refused": refused}, out)
        dist.barrier()  # neither rank tears gloo down while the other may still be talking (a rare SIGABRT)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_mpl_step_on_two_ranks_equals_one_process_on_the_whole_batch(tmp_path):
    """Gradients, h, its baseline and (soft labels) g averaged over ranks: the same update as one process.

    The ranks meet through a file, not a TCP port: a free port picked here could be taken by another
    process before the ranks bind it (the torchrun tests below let torchrun pick its own).
    """
    import torch.multiprocessing as mp

    out = tmp_path / "mpl.pt"
    mp.spawn(_mpl_step_on_two_ranks, args=(str(tmp_path / "rendezvous"), str(out)), nprocs=2, join=True)
    result = torch.load(out)
    for kind in ("soft", "sampled"):
        assert torch.allclose(result["two"][kind], result["one"][kind], rtol=0, atol=1e-12), kind
        assert not torch.allclose(result["two"][kind], torch.zeros_like(result["two"][kind]))
    assert "run it in one process, not under torchrun" in result["refused"]


# --- real 2-process runs -------------------------------------------------------------------


def config() -> dict:
    """Train, distill, then Meta Pseudo Labels (a manual task that averages its own gradients)."""
    c = copy.deepcopy(TINY)
    c["data"]["labeled_per_class"] = 40  # 160 labeled rows, 160 unlabeled
    c["stages"][1]["augment"] = {"crop_padding": 1, "flip": True}
    c["models"]["student"]["params"]["dropout"] = 0.2
    c["stages"].append({
        "name": "mpl", "kind": "mpl", "teacher": "teacher", "student": "student", "teacher_init": "teacher",
        "epochs": 2, "batch_size": 16, "unlabeled_ratio": 2, "uda": {"ramp_steps": 4}, "ema_decay": 0.9,
        "strong_augment": {"magnitude": 9}, "teacher_accuracy_images": 64})
    return c


def torchrun(workdir: Path, out: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               str(WORKER), "experiment.yaml", out, *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=240, check=False)


def records(workdir: Path, out: str) -> list[dict]:
    return [torch.load(workdir / out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def runs(workdir: Path):
    c = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlruns/mlflow.db")
    found = c.search_runs([c.get_experiment_by_name("tiny").experiment_id])
    return c, found


def without_timing(history):
    return [{k: v for k, v in epoch.items() if k != "throughput"} for epoch in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-process run of a train, a distill and an MPL stage."""
    workdir = tmp_path_factory.mktemp("ddp")
    (workdir / "experiment.yaml").write_text(yaml.safe_dump(config(), sort_keys=False))
    result = torchrun(workdir, "out")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result, records(workdir, "out")


@pytest.mark.slow
def test_two_processes_record_once_and_end_identical(reference):
    workdir, result, (rank0, rank1) = reference
    assert result.stdout.count("rank its stages with") == 1  # rank 0 alone speaks
    c, found = runs(workdir)
    parents = [r for r in found if r.data.tags.get("mentor.kind") == "experiment"]
    stages = {r.data.tags["mentor.stage"]: r for r in found if r.data.tags.get("mentor.kind") == "stage"}
    assert len(found) == 4 and len(parents) == 1 and set(stages) == {"teacher", "student", "mpl"}
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["mentor.world_size"] == "2"
    student = stages["student"].info.run_id
    assert [m.step for m in c.get_metric_history(student, "train/loss")] == [1, 2, 3]  # logged once, not twice
    assert len(c.get_metric_history(student, "val/accuracy")) == 3
    checkpoints = list((workdir / "mlruns" / "checkpoints" / "tiny").iterdir())
    assert [p.name for p in checkpoints] == [parents[0].info.run_id]  # one state folder, the parent's
    import mlflow

    from mentor.tracking.tracker import fluent_tracking_uri

    with fluent_tracking_uri(c.tracking_uri):
        models = mlflow.search_logged_models(experiment_ids=[parents[0].info.experiment_id], output_format="list")
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in stages.values())

    assert set(rank0["fits"]) == {"teacher", "student", "mpl"}
    for stage in rank0["fits"]:
        a, b = rank0["fits"][stage], rank1["fits"][stage]
        assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"]), stage
        assert without_timing(a["history"]) == without_timing(b["history"])  # metrics reduced over ranks
    [final] = workdir.glob("mlruns/checkpoints/tiny/*/student/final.pt")  # written by rank 0
    saved = torch.load(final, weights_only=True)
    assert all(torch.equal(saved[k], rank0["fits"]["student"]["weights"][k]) for k in saved)

    # every epoch, the ranks' rows are disjoint and together the epoch's permutation, cut in global batches
    # (2 steps of 2 x 32 for train and distill, 5 of 2 x 16 for MPL's labeled batches)
    assert [len(b["rows"]) for b in rank0["batches"]] == [2] * 5 + [5] * 2
    for mine, theirs in zip(rank0["batches"], rank1["batches"], strict=True):
        assert mine["order"] == theirs["order"] and mine["n"] == 160
        rows0 = [i for batch in mine["rows"] for i in batch]
        rows1 = [i for batch in theirs["rows"] for i in batch]
        assert len(rows0) == len(rows1) and not set(rows0) & set(rows1)
        assert sorted(rows0 + rows1) == sorted(mine["order"][:2 * len(rows0)])


@pytest.mark.slow  # reads the torchrun reference run
def test_evaluation_under_ddp_equals_one_process(reference):
    _, _, (rank0, _) = reference
    plugins = load_plugins(extra=[SyntheticData()])
    experiment = validate_document(Document("test", config()), plugins.registry)
    splits = ExperimentRunner(experiment, plugins).load_data()
    info = splits.info
    model = plugins.registry.get("model", "small_cnn").factory(4, 1, **experiment.models["student"].params)
    model.load_state_dict(rank0["fits"]["student"]["weights"])
    runtime = Runtime(torch.device("cpu"), None, False, False, "none")
    history = rank0["fits"]["student"]["history"]  # the recorded weights are the kept (best) epoch's
    kept = max(history, key=lambda epoch: (epoch["val/accuracy"], -epoch["epoch"]))
    for name, data in (("val", splits.val), ("test", splits.test)):
        one = evaluate(model, Batches(data, 256, shuffle=False, mean=info.mean, std=info.std), runtime)
        assert kept[f"{name}/accuracy"] == one["accuracy"]
        assert kept[f"{name}/loss"] == pytest.approx(one["loss"], rel=1e-6)


@pytest.mark.slow
def test_resume_under_torchrun_matches_the_uninterrupted_run(reference, tmp_path):
    _, _, (ref0, _) = reference
    c = config()
    c["tracking"]["log_model"] = False  # not compared here; saves time
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
    stopped = torchrun(tmp_path, "stopped", "--stop", "student:1")
    assert stopped.returncode != 0
    assert "--resume" in stopped.stderr
    _, found = runs(tmp_path)
    assert [r.info.status for r in found if r.data.tags.get("mentor.kind") == "experiment"] != ["FINISHED"]

    resumed = torchrun(tmp_path, "resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for record in records(tmp_path, "resumed"):
        assert set(record["fits"]) == {"student", "mpl"}  # the finished teacher stage is not run again
        for stage, fit in record["fits"].items():
            assert without_timing(fit["history"]) == without_timing(ref0["fits"][stage]["history"]), stage
            weights = ref0["fits"][stage]["weights"]
            assert all(torch.equal(fit["weights"][k], weights[k]) for k in weights), stage
    _, found = runs(tmp_path)
    assert len(found) == 4 and all(r.info.status == "FINISHED" for r in found)


@pytest.mark.slow
def test_pool_scoring_under_torchrun_shards_by_chunk_and_equals_one_process(tmp_path, monkeypatch):
    """Each rank scores chunks rank, rank + 2, ... into one shared table, the same table one process writes."""
    import polars as pl
    from PIL import Image

    from mentor.pool_scores import table_record
    from mentor_plugins.models.small_cnn import small_cnn

    from .conftest import SyntheticData

    (tmp_path / "pool").mkdir()
    for i, image in enumerate(synthetic_images(10, 3).images):
        Image.fromarray(image[0].numpy()).save(tmp_path / "pool" / f"{i:02d}.png")
    torch.manual_seed(0)
    torch.save(small_cnn(4, 1, channels=[8, 8]).state_dict(), tmp_path / "teacher.pt")
    c = copy.deepcopy(TINY)
    c["data"]["unlabeled"] = {"source": "image_folder", "params": {"path": str(tmp_path / "pool")}}
    c["models"]["teacher"]["checkpoint"] = str(tmp_path / "teacher.pt")
    c["stages"] = [{"name": "label", "kind": "label", "teacher": "teacher", "top_p": 2, "score_chunk_size": 3}]
    c["tracking"] = {"log_model": False}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
    result = torchrun(tmp_path, "out")
    assert result.returncode == 0, result.stderr[-3000:]
    [table] = (tmp_path / "mlruns" / "cache" / "scores").iterdir()
    chunks = sorted(table.glob("chunk-*.parquet"))
    assert [table_record(f)["rank"] for f in chunks] == [0, 1, 0, 1]  # 10 files in chunks of 3
    two = pl.read_parquet(chunks).sort("index", "rank")

    one_process = copy.deepcopy(c)
    one_process["tracking"]["cache_dir"] = str(tmp_path / "one")
    from mentor.pipeline import run_experiment

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plugins = load_plugins(extra=[SyntheticData()])
    run_experiment(validate_document(Document("t", one_process), plugins.registry), plugins)
    one = pl.read_parquet(sorted((tmp_path / "one").glob("scores/*/chunk-*.parquet"))).sort("index", "rank")
    assert one["index"].to_list() == two["index"].to_list() and one["class"].to_list() == two["class"].to_list()
    assert one["prob"].to_list() == pytest.approx(two["prob"].to_list(), abs=1e-6)
