"""Unlabeled pools from files: decoding rules, skipped files, sources and their errors."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from PIL import Image

from mentor import Batches, DataNotFound, ImagePool, ImageSet, find_images
from mentor.config import ConfigError, load_experiment
from mentor.tracking.store import tracking_uri


@pytest.fixture
def pool_folder(tmp_path):
    """Nested PNG/JPEG files: grayscale 8x8, one RGB, one of another size, one corrupt, one non-image."""
    root = tmp_path / "pool"
    (root / "a" / "b").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (8, 8), color=40 * i).save(root / "a" / f"g{i}.png")
    Image.new("RGB", (8, 8), color=(255, 0, 0)).save(root / "a" / "b" / "red.jpg")
    Image.new("L", (16, 8), color=200).save(root / "a" / "b" / "wide.png")
    (root / "broken.png").write_bytes(b"not a png at all")
    (root / "notes.txt").write_text("ignored")
    return root


def test_image_folder_finds_nested_files_sorted(plugins, pool_folder):
    pool = plugins.registry.get("unlabeled_source", "image_folder").build(path=str(pool_folder))
    names = [p.split("pool/")[1] for p in pool.paths]
    assert names == ["a/b/red.jpg", "a/b/wide.png", "a/g0.png", "a/g1.png", "a/g2.png", "broken.png"]
    assert pool.index.tolist() == list(range(6))


def test_batches_decode_convert_and_skip_corrupt_files(plugins, pool_folder):
    pool = plugins.registry.get("unlabeled_source", "image_folder").build(path=str(pool_folder))
    images, index, skipped = [], [], []
    for x, i, bad in pool.batches(channels=1, size=(8, 8), batch_size=4):
        if x is not None:
            images.append(x)
        index.append(i)
        skipped += bad
    images, index = torch.cat(images), torch.cat(index)
    assert images.dtype == torch.uint8 and images.shape == (5, 1, 8, 8)
    assert index.tolist() == [0, 1, 2, 3, 4]
    assert len(skipped) == 1 and skipped[0][0].endswith("broken.png") and skipped[0][1]
    red = round(0.299 * 255)  # the ITU-R 601 luma of pure red (JPEG shifts it a little)
    assert abs(int(images[0].float().mean()) - red) <= 3
    assert (images[1] == 200).all()  # 16x8 resized by its shorter side, centre-cropped
    rgb = pool.images(torch.tensor([2]), channels=3, size=(4, 4))
    assert rgb.shape == (1, 3, 4, 4) and (rgb == 0).all()


def test_path_list_resolves_relative_paths(plugins, pool_folder):
    import polars as pl

    table = pool_folder / "list.csv"
    pl.DataFrame({"path": ["a/g1.png", str(pool_folder / "a" / "g2.png")]}).write_csv(table)
    pool = plugins.registry.get("unlabeled_source", "path_list").build(path=str(table))
    assert list(pool.paths) == [str(pool_folder / "a" / "g1.png"), str(pool_folder / "a" / "g2.png")]
    assert isinstance(pool, ImagePool)


def test_missing_and_empty_sources_name_the_path(plugins, tmp_path):
    folder = plugins.registry.get("unlabeled_source", "image_folder")
    with pytest.raises(DataNotFound, match=str(tmp_path / "nowhere")):
        folder.build(path=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFound, match="holds no images"):
        folder.build(path=str(tmp_path / "empty"))
    with pytest.raises(DataNotFound, match="list.csv"):
        plugins.registry.get("unlabeled_source", "path_list").build(path=str(tmp_path / "list.csv"))


def test_data_unlabeled_is_validated_with_did_you_mean(write_yaml, tiny_config, plugins):
    tiny_config["data"]["unlabeled"] = {"source": "image_foldr", "params": {"path": "x"}}
    with pytest.raises(ConfigError) as err:
        load_experiment(write_yaml(tiny_config), registry=plugins.registry)
    found = {p.path: p for p in err.value.problems}
    assert "did you mean 'image_folder'" in found["data.unlabeled.source"].message
    assert found["data.unlabeled.source"].line is not None
    tiny_config["data"]["unlabeled"] = {"source": "image_folder", "params": {"path": "x"}}
    path = write_yaml(tiny_config)
    with pytest.raises(ConfigError, match=r"data.unlabeled.params.path: no such file or folder: .*x \(a relative path "
                       r"is read from the experiment file's folder\)"):
        load_experiment(path, registry=plugins.registry)  # validate names a folder that is not there
    (path.parent / "x").mkdir()
    exp = load_experiment(path, registry=plugins.registry)
    assert exp.data.unlabeled.params == {"path": str((path.parent / "x").resolve())}  # from the file's folder


def _pool_experiment(tiny_config, folder):
    from .test_pseudo_label import ssl_config

    config = ssl_config(tiny_config, finetune={"epochs": 1, "batch_size": 16})
    config["data"]["unlabeled"] = {"source": "image_folder", "params": {"path": str(folder)}}
    return config


@pytest.mark.slow
def test_pseudo_label_on_a_pool_scores_selects_and_reuses(workdir, plugins, tiny_config, pool_folder, capfd):
    from mentor.config import validate_document
    from mentor.config.document import Document
    from mentor.pipeline import run_experiment

    from .conftest import synthetic_images

    for i, image in enumerate(synthetic_images(40, 5).images):  # learnable images, nested two deep
        sub = pool_folder / "syn" / str(i % 3)
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(sub / f"{i:03d}.png")
    config = _pool_experiment(tiny_config, pool_folder)
    results = run_experiment(validate_document(Document("t", config), plugins.registry), plugins)
    assert "pl" in results
    [table_dir] = [p.parent for p in (workdir / "mlruns" / "cache" / "scores").glob("*/meta.json")]
    import polars as pl

    scores = pl.read_parquet(sorted(table_dir.glob("chunk-*.parquet")))
    assert scores["index"].n_unique() == 45  # 46 files, the corrupt one skipped
    skipped = pl.read_csv(sorted(table_dir.glob("chunk-*.skipped.csv")))
    assert skipped["path"].to_list() == [str(pool_folder / "broken.png")]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri())
    [run] = [r for r in client.search_runs([client.get_experiment_by_name("ssl").experiment_id])
             if r.data.tags.get("mentor.round") == "1"]
    assert run.data.tags["mentor.scores.key"] == table_dir.name and run.data.tags["mentor.scores.reused"] == "false"
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "scores_round1")}
    assert {"scores_round1/chunk-00000.parquet", "scores_round1/meta.json", "scores_round1/skipped.csv"} <= logged
    m = run.data.metrics
    assert m["pool/scored_images"] == 45 and m["pool/skipped"] == 1 and 0 < m["pool/confidence_p50"] <= 1
    per_class = pl.read_csv(client.download_artifacts(run.info.run_id, "pseudo_labels/per_class.csv"))
    assert per_class["top1_images"].sum() == 45 and per_class["selected"].sum() == m["pseudo/selected_rows"]
    assert per_class["class_name"].to_list() == ["abcd"[label] for label in per_class["label"].to_list()]
    named = {k for k in m if k.startswith("pseudo/class_")}  # per class by the data's class names
    assert named and all(k.split("/")[1] in ("class_a", "class_b", "class_c", "class_d") for k in named)
    # the selected rows as a person joins them back: each one's file and class name
    selected = pl.read_parquet(client.download_artifacts(run.info.run_id, "pseudo_labels/selected.parquet"))
    from mentor import find_images

    files = [str(p) for p in find_images(pool_folder)]  # the pool's rows: its files, sorted
    assert selected["path"].to_list() == [files[i] for i in selected["index"].to_list()]
    assert selected["class_name"].to_list() == ["abcd"[label] for label in selected["label"].to_list()]
    out = capfd.readouterr().out  # said on the terminal as it happened
    assert "[pl] scores_round1: scored 46 files of the pool; 1 could not be read (listed in the run's " \
           "scores_round1/skipped.csv)" in out
    assert f"[pl] round 1: selected {len(selected):,} rows of 46 files" in out



class _Mean(torch.nn.Module):
    """A fixed model: class 1 when an image is brighter than mid-grey, else class 0."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(2))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        m = x.mean((1, 2, 3))
        return torch.stack([-m, m], 1) * 10 + self.bias


def _score(model, pool, folder, chunk_size=2):
    from mentor.engine.runtime import Runtime
    from mentor.pool_scores import score_pool

    runtime = Runtime(torch.device("cpu"), None, False, False, "none", loader_workers=0)
    return score_pool(model, pool, folder, channels=1, size=(8, 8), top_p=2, batch_size=2, mean=(0.5,),
                      std=(0.5,), runtime=runtime, chunk_size=chunk_size)


def test_scores_table_top1_reuse_and_resume(plugins, pool_folder, tmp_path, capfd):
    pool = plugins.registry.get("unlabeled_source", "image_folder").build(path=str(pool_folder))
    model = _Mean()
    table = _score(model, pool, tmp_path / "scores")
    scores, skipped = table.scan(), table.skipped()
    top1 = scores.filter(pl.col("rank") == 0).sort("index").collect()
    # by hand: red.jpg (luma ~76), wide (200) are bright? 76 < 128 -> 0; 200 -> 1; greys 0, 40, 80 -> 0
    assert top1["index"].to_list() == [0, 1, 2, 3, 4]
    assert top1["class"].to_list() == [0, 1, 0, 0, 0]
    assert skipped["path"].to_list() == [str(pool_folder / "broken.png")]
    calls = model.calls
    capfd.readouterr()
    again = _score(model, pool, tmp_path / "scores")
    assert model.calls == calls and "reusing pseudo-label table" in capfd.readouterr().err
    assert again.reused and again.folder == table.folder
    assert _score(model, pool, tmp_path / "scores", chunk_size=4).reused  # the chunk size changes no score
    assert again.scan().collect().equals(scores.collect())
    from mentor.pool_scores import table_record

    record = table_record(table.chunks[0])  # the file says what it is, wherever it is copied
    assert record["key"] == table.folder.name and record["top_p"] == 2 and record["pool"]["count"] == 6
    assert len(record["teacher_sha256"]) == 64

    moved = torch.nn.Module.__new__(_Mean)  # another teacher (its bias changed): another table, scored afresh
    moved.__init__()
    with torch.no_grad():
        moved.bias[0] = 0.5
    other = _score(moved, pool, tmp_path / "scores")
    assert not other.reused and other.folder != table.folder and moved.calls > 0

    class Interrupt(_Mean):
        def forward(self, x):
            if self.calls >= 1:
                raise KeyboardInterrupt
            return super().forward(x)

    fresh = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _score(Interrupt(), pool, fresh)
    assert [p.name for p in sorted(fresh.glob("*/chunk-*.parquet"))] == ["chunk-00000.parquet"]
    resumed = _Mean()
    capfd.readouterr()
    table = _score(resumed, pool, fresh)
    assert resumed.calls == 2  # chunks 1 and 2 only (chunk 2 holds broken.png and g2.png)
    assert "1 of 3 chunks already scored" in capfd.readouterr().err
    assert table.scan().sort("index", "rank").collect().equals(scores.sort("index", "rank").collect())


@pytest.mark.parametrize("kind", ["missing", "empty"])
@pytest.mark.slow
def test_cli_run_reports_a_missing_or_empty_pool_with_exit_2(workdir, tmp_path, kind):
    import subprocess
    import sys

    import yaml

    folder = tmp_path / kind
    if kind == "empty":
        (folder / "sub").mkdir(parents=True)
    config = {"name": "p", "data": {"source": "fashion_mnist", "params": {"download": False}, "labeled_per_class": 5,
                                    "unlabeled": {"source": "image_folder", "params": {"path": str(folder)}}},
              "models": {"m": {"name": "small_cnn"}}, "stages": [{"kind": "train", "model": "m", "epochs": 1}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([sys.executable, "-m", "mentor.cli", "run", str(path)], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert str(folder) in out.stderr and "Traceback" not in out.stderr


def test_a_relative_pool_path_is_read_from_the_experiment_files_folder(plugins, pool_folder, tmp_path,
                                                                       monkeypatch):
    """The same file runs from any working directory; a --set value is the user's own, from the cwd."""
    import yaml

    from .conftest import TINY

    config = dict(TINY, data=dict(TINY["data"], unlabeled={"source": "image_folder", "params": {"path": "pool"}}))
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    exp = load_experiment(path, registry=plugins.registry)
    assert exp.data.unlabeled.params["path"] == str(pool_folder.resolve())
    (elsewhere / "pool").mkdir()
    exp = load_experiment(path, ["data.unlabeled.params.path=pool"], registry=plugins.registry)
    assert exp.data.unlabeled.params["path"] == str((elsewhere / "pool").resolve())


@pytest.mark.slow
def test_label_stage_table_is_reused_by_a_pseudo_label_stage_and_a_later_run(workdir, pool_folder, capfd):
    """teacher file + folder -> table (label stage); the same teacher and pool later read it, never score again;
    the student trains jointly on soft targets read from the table and on files decoded batch by batch."""
    import yaml
    from mlflow import MlflowClient

    from mentor.cli import main

    from .test_teachers import DATA, STUDENT, TEACHER, teacher_weights

    torch.save(teacher_weights(), workdir / "teacher.pt")
    selection = {"name": "top_k_per_class", "params": {"k": 2}}
    unlabeled = {"source": "image_folder", "params": {"path": str(pool_folder)}}
    config = {"name": "lab", "data": {**DATA, "unlabeled": unlabeled},
              "models": {"teacher": {**TEACHER, "checkpoint": "teacher.pt"}, "student": STUDENT},
              "stages": [{"name": "label", "kind": "label", "teacher": "teacher", "top_p": 2, "selection": selection},
                         {"name": "pl", "kind": "pseudo_label", "teacher": "teacher", "student": "student",
                          "top_p": 2, "selection": selection, "labels": "soft", "mode": "joint", "epochs": 1,
                          "batch_size": 4}],
              "engine": {"progress": "none"}, "tracking": {"log_model": False}}
    path = workdir / "lab.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 0, capfd.readouterr().err
    err = capfd.readouterr().err
    assert err.count("reusing pseudo-label table") == 1  # the pseudo_label stage, after the label stage

    client = MlflowClient(tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("lab").experiment_id])
    label = next(r for r in runs if r.data.tags.get("mentor.stage") == "label" and "mentor.scores.key" in r.data.tags)
    round1 = next(r for r in runs if r.data.tags.get("mentor.round") == "1")
    key = label.data.tags["mentor.scores.key"]
    assert label.data.tags["mentor.scores.reused"] == "false"
    assert round1.data.tags["mentor.scores.key"] == key and round1.data.tags["mentor.scores.reused"] == "true"
    assert label.data.metrics["pool/scored_images"] == 5 and label.data.metrics["pool/skipped"] == 1
    assert label.data.metrics["pseudo/selected_rows"] == pytest.approx(
        pl.read_parquet(client.download_artifacts(label.info.run_id, "pseudo_labels/selected.parquet")).height)
    table = pl.read_parquet(client.download_artifacts(label.info.run_id, "scores/chunk-00000.parquet"))
    assert table.height == 5 * 2 and set(table.columns) == {"index", "rank", "class", "prob"}

    # by hand: the teacher's top-2 of one file, decoded by the pool rules and normalised by the data's statistics
    from mentor.config import load_experiment
    from mentor.pipeline import ExperimentRunner
    from mentor_plugins.models.small_cnn import small_cnn

    model = small_cnn(4, 1, channels=[8])
    model.load_state_dict(torch.load(workdir / "teacher.pt"))
    model.eval()
    info = ExperimentRunner(load_experiment(path)).load_data().info
    pool = ImagePool(find_images(pool_folder))
    x = pool.images(torch.tensor([0]), 1, (8, 8)).float() / 255
    with torch.no_grad():
        probs = model((x - info.mean[0]) / info.std[0]).softmax(1)[0]
    top = table.filter(pl.col("index") == 0).sort("rank")
    assert top["class"].to_list() == probs.topk(2).indices.tolist()
    assert top["prob"].to_list() == pytest.approx(probs.topk(2).values.tolist(), abs=1e-6)

    assert main(["run", str(path), "--set", "seed=1"]) == 0, capfd.readouterr().err  # a later run
    assert capfd.readouterr().err.count("reusing pseudo-label table") == 2
    later = [r for r in client.search_runs([client.get_experiment_by_name("lab").experiment_id])
             if r.data.tags.get("mentor.stage") == "label" and r.info.run_id != label.info.run_id
             and "mentor.scores.key" in r.data.tags]
    assert [r.data.tags["mentor.scores.reused"] for r in later] == ["true"]
    assert later[0].data.tags["mentor.scores.key"] == key


@pytest.mark.parametrize("workers", [0, 2])
def test_a_selection_trains_from_its_files_batch_by_batch(pool_folder, workers, monkeypatch):
    """PoolImages stand in for the image tensor: the same batches as the decoded set, each file read only
    when its batch is cut, labeled in-memory rows appended by row number (joint mode)."""
    import mentor.data.pool as pool_module

    pool = ImagePool([p for p in find_images(pool_folder) if "broken" not in str(p)])
    index = torch.tensor([4, 0, 2, 2])  # a selection: an image may appear twice
    files = pool.files(index, 1, (8, 8))
    assert files.shape == (4, 1, 8, 8) and len(files) == 4
    decoded = pool.images(index, 1, (8, 8))
    labeled = torch.full((2, 1, 8, 8), 7, dtype=torch.uint8)
    joint = files.with_memory(labeled, torch.tensor([0, 1, 0]))
    expected = torch.cat([decoded, labeled[[0, 1, 0]]])
    assert torch.equal(joint[torch.arange(7)], expected)
    data = ImageSet(joint, torch.arange(7))
    assert torch.equal(data.subset(torch.tensor([6, 0])).images[:],
                       expected[[6, 0]])

    reads = []
    real = pool_module.read_image
    monkeypatch.setattr(pool_module, "read_image", lambda p: reads.append(p) or real(p))
    lazy = Batches(data, 3, shuffle=True, seed=5, mean=(0.5,), std=(0.5,), workers=workers)
    assert not lazy.resident
    assert reads == []  # nothing is decoded before a batch is asked for
    eager = Batches(ImageSet(expected, torch.arange(7)), 3, shuffle=True, seed=5, mean=(0.5,), std=(0.5,))
    for (x, y), (ex, ey) in zip(lazy.epoch(1), eager.epoch(1), strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    if workers == 0:
        assert len(reads) == 4  # the four file rows, once each in the epoch; the labeled rows are in memory


@pytest.mark.slow
def test_a_killed_label_stage_resumes_its_scoring_from_the_last_written_chunk(workdir, pool_folder, capfd,
                                                                              monkeypatch):
    import yaml

    import mentor.pool_scores as pool_scores
    from mentor.cli import main

    from .test_teachers import DATA, TEACHER, teacher_weights

    torch.save(teacher_weights(), workdir / "teacher.pt")
    config = {"name": "kill", "data": {**DATA, "unlabeled": {"source": "image_folder",
                                                              "params": {"path": str(pool_folder)}}},
              "models": {"teacher": {**TEACHER, "checkpoint": "teacher.pt"}},
              "stages": [{"name": "label", "kind": "label", "teacher": "teacher", "top_p": 2, "score_chunk_size": 2}],
              "engine": {"progress": "none"}}
    path = workdir / "kill.yaml"
    path.write_text(yaml.safe_dump(config))
    real, scored = pool_scores._score_chunk, []

    def dies_at_the_second_chunk(*args, **kwargs):
        if scored:
            raise KeyboardInterrupt  # Ctrl-C while chunk 1 is being scored
        real(*args, **kwargs)
        scored.append(args[3])

    monkeypatch.setattr(pool_scores, "_score_chunk", dies_at_the_second_chunk)
    assert main(["run", str(path)]) != 0
    monkeypatch.setattr(pool_scores, "_score_chunk", lambda *a, **k: scored.append(a[3]) or real(*a, **k))
    capfd.readouterr()
    assert main(["run", str(path), "--resume"]) == 0, capfd.readouterr().err
    assert "1 of 3 chunks already scored" in capfd.readouterr().err
    assert scored == [0, 1, 2]  # chunk 0 once, before the kill; then 1 and 2
