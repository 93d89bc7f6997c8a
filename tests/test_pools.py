"""Unlabeled pools from files: decoding rules, skipped files, sources and their errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mentor import DataNotFound, ImagePool
from mentor.config import ConfigError, load_experiment


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
    assert pool.paths == [str(pool_folder / "a" / "g1.png"), str(pool_folder / "a" / "g2.png")]
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
    exp = load_experiment(write_yaml(tiny_config), registry=plugins.registry)
    assert exp.data.unlabeled.params == {"path": "x"}
