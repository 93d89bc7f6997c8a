"""Data sources, deterministic splits, per-sample augmentation and batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mentor.data import (
    BatchAugment,
    Batches,
    DataBundle,
    DataInfo,
    DataNotFound,
    ImageSet,
    UnlabeledSet,
    balanced_subset,
    make_splits,
)
from mentor.data.crop_flip import random_crop, random_flip
from mentor_plugins import data as data_plugin

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# --- helpers -------------------------------------------------------------------


def synthetic_set(counts: list[int], c: int = 1, size: int = 4, seed: int = 0) -> ImageSet:
    """An ImageSet with ``counts[k]`` rows of class k, shuffled, random pixels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    images = torch.randint(0, 256, (len(labels), c, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(images, labels)


def synthetic_bundle(counts: list[int], test_counts: list[int] | None = None) -> DataBundle:
    train = synthetic_set(counts)
    test = synthetic_set(test_counts or [10] * len(counts), seed=1)
    info = DataInfo(num_classes=len(counts), in_channels=1, image_size=(4, 4), mean=(0.5,),
                    std=(0.25,), class_names=tuple(f"c{k}" for k in range(len(counts))))
    return DataBundle(train=train, test=test, info=info)


def per_class(labels: torch.Tensor, num_classes: int) -> list[int]:
    return [int((labels == k).sum()) for k in range(num_classes)]


# --- sources ---------------------------------------------------------------------


def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{FASHION_DIR} is absent (apt-get install dataset-fashion-mnist)")
    monkeypatch.delenv("MENTOR_FASHION_MNIST_DIR", raising=False)
    bundle = data_plugin.fashion_mnist(root=str(tmp_path), download=False)
    assert bundle.train.images.shape == (60000, 1, 28, 28)
    assert bundle.test.images.shape == (10000, 1, 28, 28)
    assert bundle.train.images.dtype == torch.uint8
    assert bundle.train.labels.dtype == torch.int64
    assert per_class(bundle.train.labels, 10) == [6000] * 10
    assert per_class(bundle.test.labels, 10) == [1000] * 10
    info = bundle.info
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 1, (28, 28))
    assert info.mean == (0.2860,) and info.std == (0.3530,)
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"
    assert len(info.class_names) == 10
    assert int(bundle.train.images.max()) == 255
    assert not any(tmp_path.iterdir())  # read in place, nothing written or downloaded


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    empty = tmp_path / "debian"
    empty.mkdir()
    monkeypatch.setenv("MENTOR_FASHION_MNIST_DIR", str(empty))
    with pytest.raises(DataNotFound) as err:
        data_plugin.fashion_mnist(root=str(tmp_path / "root"), download=False)
    msg = str(err.value)
    assert "Fashion-MNIST not found" in msg
    assert "download: true" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_a_failed_download_says_how_to_work_offline_and_leaves_no_folders(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets as tvd

    def offline(self):  # what torchvision does without a network: make the folders, then fail
        Path(self.raw_folder).mkdir(parents=True, exist_ok=True)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd.FashionMNIST, "download", offline)
    empty = tmp_path / "debian"
    empty.mkdir()
    monkeypatch.setenv("MENTOR_FASHION_MNIST_DIR", str(empty))
    root = tmp_path / "cache" / "data"
    with pytest.raises(DataNotFound) as err:
        data_plugin.fashion_mnist(root=str(root), download=True)
    msg = str(err.value)
    assert "downloading it failed: <urlopen error [Errno -3] Temporary failure in name resolution>" in msg
    assert "`apt-get install dataset-fashion-mnist` puts it in /usr/share/datasets/fashion-mnist" in msg
    assert "set MENTOR_FASHION_MNIST_DIR to a folder holding train-images-idx3-ubyte.gz" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["debian"]  # cache/data/FashionMNIST/raw undone


def test_registered_sources_and_params():
    seen = {}

    def register(name, factory, params=None, description=None):
        seen[name] = (factory, params, description)

    data_plugin.register_data_sources(register)
    assert set(seen) == {"fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "image_folder"}
    params = seen["mnist"][1]()
    assert params.root == "~/.cache/mentor/data" and params.download is False
    with pytest.raises(ValueError, match="extra"):
        seen["cifar10"][1](roots="x")
    with pytest.raises(ValueError, match="root"):
        seen["image_folder"][1]()
    assert all(desc for _, _, desc in seen.values())


def write_png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder(tmp_path):
    root = tmp_path / "imgs"
    sizes = [(10, 12), (40, 20), (7, 7)]
    for i, s in enumerate(sizes):
        write_png(root / "train" / "cat" / f"{i}.png", s, (255, 0, 0))
        write_png(root / "train" / "dog" / f"{i}.png", s, (0, 0, 255))
    write_png(root / "test" / "dog" / "0.png", (16, 16), (0, 0, 255))
    write_png(root / "test" / "cat" / "0.png", (5, 9), (255, 0, 0))

    bundle = data_plugin.image_folder(root=str(root), image_size=8)
    assert bundle.train.images.shape == (6, 3, 8, 8)
    assert bundle.test.images.shape == (2, 3, 8, 8)
    assert bundle.train.images.dtype == torch.uint8
    assert bundle.info.class_names == ("cat", "dog")
    assert bundle.info.num_classes == 2 and bundle.info.image_size == (8, 8)
    assert bundle.train.labels.tolist() == [0, 0, 0, 1, 1, 1]  # folder order
    assert bundle.test.labels.tolist() == [0, 1]
    cats = bundle.train.images[bundle.train.labels == 0]
    assert int(cats[:, 0].min()) == 255 and int(cats[:, 2].max()) == 0  # red stayed red
    # half the train pixels are red, half blue: R mean 0.5, std 0.5; G all zero, so no spread: std 1
    # (normalising only centres it; a std of 0 would divide by zero)
    mean, std = bundle.info.mean, bundle.info.std
    assert mean == pytest.approx((0.5, 0.0, 0.5), abs=1e-6)
    assert std == pytest.approx((0.5, 1.0, 0.5), abs=1e-6)

    gray = data_plugin.image_folder(root=str(root), image_size=5, grayscale=True)
    assert gray.train.images.shape == (6, 1, 5, 5) and gray.info.in_channels == 1


def test_image_folder_without_test_folder(tmp_path):
    write_png(tmp_path / "train" / "a" / "0.png", (4, 4), (1, 2, 3))
    with pytest.raises(DataNotFound, match="test/"):
        data_plugin.image_folder(root=str(tmp_path))
    with pytest.raises(DataNotFound, match="does not exist"):
        data_plugin.image_folder(root=str(tmp_path / "nowhere"))


# --- splits ------------------------------------------------------------------------


def test_splits_balanced_disjoint_and_covering():
    bundle = synthetic_bundle([50, 40, 30])
    s = make_splits(bundle, val_size=10, labeled_per_class=5, split_seed=3)
    assert per_class(s.val.labels, 3) in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert per_class(s.labeled.labels, 3) == [5, 5, 5]
    assert len(s.unlabeled) == 120 - 10 - 15
    val, lab, unl = (set(x.index.tolist()) for x in (s.val, s.labeled, s.unlabeled))
    assert not (val & lab) and not (val & unl) and not (lab & unl)
    assert val | lab | unl == set(range(120))
    # rows and their labels travel together
    assert torch.equal(bundle.train.labels[s.labeled.index], s.labeled.labels)
    assert torch.equal(bundle.train.images[s.unlabeled.index], s.unlabeled.images)
    assert len(s.test) == 30


def test_splits_without_labeled_per_class():
    bundle = synthetic_bundle([20, 20])
    s = make_splits(bundle, val_size=0, labeled_per_class=None, split_seed=0)
    assert len(s.val) == 0 and s.val.images.shape == (0, 1, 4, 4)
    assert len(s.labeled) == 40 and len(s.unlabeled) == 0
    assert s.unlabeled.images.shape == (0, 1, 4, 4)


def test_splits_deterministic_by_seed():
    bundle = synthetic_bundle([60, 60, 60, 60])
    a = make_splits(bundle, val_size=20, labeled_per_class=10, split_seed=7, test_size=8)
    b = make_splits(bundle, val_size=20, labeled_per_class=10, split_seed=7, test_size=8)
    c = make_splits(bundle, val_size=20, labeled_per_class=10, split_seed=8, test_size=8)
    for name in ("val", "labeled", "unlabeled", "test"):
        assert torch.equal(getattr(a, name).index, getattr(b, name).index)
        assert torch.equal(getattr(a, name).images, getattr(b, name).images)
    assert not torch.equal(a.val.index, c.val.index)
    assert not torch.equal(a.labeled.index, c.labeled.index)
    assert per_class(a.test.labels, 4) == [2, 2, 2, 2]


def test_splits_nested_labeled_and_stable_val():
    bundle = synthetic_bundle([80, 80, 80])
    small = make_splits(bundle, val_size=12, labeled_per_class=5, split_seed=1)
    large = make_splits(bundle, val_size=12, labeled_per_class=30, split_seed=1)
    assert torch.equal(small.val.index, large.val.index)
    assert set(small.labeled.index.tolist()) <= set(large.labeled.index.tolist())


def test_labeled_per_class_too_large():
    bundle = synthetic_bundle([30, 12])
    make_splits(bundle, val_size=4, labeled_per_class=10, split_seed=0)  # 2 + 10 fit
    with pytest.raises(ValueError, match="^11 but after taking 4 validation rows") as err:
        make_splits(bundle, val_size=4, labeled_per_class=11, split_seed=0)
    assert "c1 has 10" in str(err.value)
    assert err.value.field == "labeled_per_class"  # the pipeline locates it at data.labeled_per_class


def test_unlabeled_hides_labels():
    bundle = synthetic_bundle([25, 25])
    s = make_splits(bundle, val_size=0, labeled_per_class=5, split_seed=0)
    assert isinstance(s.unlabeled, UnlabeledSet)
    assert not hasattr(s.unlabeled, "labels")
    assert torch.equal(s.reveal_labels(s.unlabeled.index), bundle.train.labels[s.unlabeled.index])
    part = s.unlabeled.subset(torch.tensor([3, 0]))
    assert not hasattr(part, "labels") and len(part) == 2
    assert torch.equal(part.index, s.unlabeled.index[[3, 0]])
    assert torch.equal(s.reveal_labels(part.index), bundle.train.labels[part.index])
    with pytest.raises(KeyError):
        s.reveal_labels(torch.tensor([10_000]))


def test_balanced_subset_counts_sorted_and_nested():
    labels = synthetic_set([300, 250, 400, 350]).labels
    for n in (0, 1, 7, 40, 401):
        rows = balanced_subset(labels, n, seed=5)
        assert len(rows) == n
        assert torch.equal(rows, torch.sort(rows).values)
        assert len(set(rows.tolist())) == n
        counts = per_class(labels[rows], 4)
        assert max(counts) - min(counts) <= 1
    small = set(balanced_subset(labels, 100 * 4 // 10, seed=5).tolist())
    large = set(balanced_subset(labels, 1000 * 4 // 10, seed=5).tolist())
    assert small <= large
    for n in range(0, 60, 7):  # nested at every size, remainders included
        assert set(balanced_subset(labels, n, 9).tolist()) <= set(
            balanced_subset(labels, n + 5, 9).tolist())
    assert not torch.equal(balanced_subset(labels, 40, 1), balanced_subset(labels, 40, 2))


def test_balanced_subset_small_class_and_errors():
    labels = synthetic_set([3, 50, 50]).labels
    rows = balanced_subset(labels, 30, seed=0)
    assert per_class(labels[rows], 3) in ([3, 14, 13], [3, 13, 14])
    with pytest.raises(ValueError):
        balanced_subset(labels, 104, seed=0)


# --- augmentation --------------------------------------------------------------------


def test_random_crop_zero_padding_is_identity():
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    assert torch.equal(random_crop(x, 0, torch.Generator().manual_seed(0)), x)


def test_random_crop_is_a_crop_of_the_padded_input():
    p = 2
    x = torch.randint(1, 256, (16, 3, 5, 7), dtype=torch.uint8)
    out = random_crop(x, p, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = F.pad(x, (p, p, p, p))
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 7])]
        assert matches, f"sample {i} is not a crop of its padded input"


def test_random_crop_per_sample_and_seeded():
    x = torch.rand(64, 1, 8, 8) + 1  # strictly positive, so padding shows as zeros
    out = random_crop(x, 4, torch.Generator().manual_seed(1))
    # Zero rows/cols from the padding reveal each sample's offset: many distinct patterns.
    patterns = {tuple((out[i, 0] == 0).flatten().tolist()) for i in range(64)}
    assert len(patterns) > 10
    again = random_crop(x, 4, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert not torch.equal(out, random_crop(x, 4, torch.Generator().manual_seed(2)))


def test_random_flip():
    x = torch.randint(0, 256, (32, 2, 4, 5), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_flip(x, g, p=1.0), x.flip(-1))
    assert torch.equal(random_flip(x, g, p=0.0), x)
    half = random_flip(x, torch.Generator().manual_seed(3), p=0.5)
    flipped = [torch.equal(half[i], x[i].flip(-1)) for i in range(32)]
    kept = [torch.equal(half[i], x[i]) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 32
    assert torch.equal(half, random_flip(x, torch.Generator().manual_seed(3), p=0.5))


def test_batch_augment():
    x = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8)
    assert torch.equal(BatchAugment()(x, torch.Generator().manual_seed(0)), x)
    aug = BatchAugment(crop_padding=2, flip=True)
    a = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(4)))


# --- batches ----------------------------------------------------------------------------


def test_batches_cover_every_row_once():
    data = synthetic_set([13, 10])
    b = Batches(data, 5, shuffle=True, mean=(0.5,), std=(0.25,), seed=0)
    assert len(b) == 5
    ys, xs = [], []
    for x, y in b.epoch(0):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        xs.append(x)
        ys.append(y)
    assert [len(y) for y in ys] == [5, 5, 5, 5, 3]
    # every image exactly once: compare de-normalised batch rows with the set's rows
    got = (torch.cat(xs) * 0.25 + 0.5) * 255
    got = got.round().to(torch.uint8)

    def key(t):
        return sorted(map(tuple, t.flatten(1).tolist()))

    assert key(got) == key(data.images)
    assert sorted(torch.cat(ys).tolist()) == sorted(data.labels.tolist())
    dropped = Batches(data, 5, shuffle=True, drop_last=True, mean=(0.5,), std=(0.25,))
    assert len(dropped) == 4 and sum(len(y) for _, y in dropped.epoch(0)) == 20


def test_batches_epochs_reproducible_and_shuffled():
    data = synthetic_set([30, 30], c=3, size=6)
    aug = BatchAugment(crop_padding=2, flip=True)
    kw = {"shuffle": True, "mean": (0.4, 0.5, 0.6), "std": (0.2, 0.3, 0.25), "augment": aug,
          "seed": 11}
    first = Batches(data, 8, **kw)
    list(first.epoch(0))  # a process that ran epoch 0 before ...
    run_a = list(first.epoch(3))
    run_b = list(Batches(data, 8, **kw).epoch(3))  # ... and one that starts at epoch 3
    assert len(run_a) == len(run_b) == 8
    for (xa, ya), (xb, yb) in zip(run_a, run_b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    e3 = torch.cat([y for _, y in run_a])
    e4 = torch.cat([y for _, y in Batches(data, 8, **kw).epoch(4)])
    order3 = Batches(data, 8, **{**kw, "augment": None}).order(3)
    order4 = Batches(data, 8, **{**kw, "augment": None}).order(4)
    assert not torch.equal(order3, order4)
    assert torch.equal(e3, data.labels[order3]) and torch.equal(e4, data.labels[order4])
    other_seed = Batches(data, 8, **{**kw, "seed": 12}).order(3)
    assert not torch.equal(order3, other_seed)


def test_batches_unshuffled_normalisation_by_hand():
    data = synthetic_set([4, 4], c=3, size=5)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.4, 0.3)
    b = Batches(data, 3, shuffle=False, mean=mean, std=std)
    x, y = next(iter(b.epoch(0)))
    assert torch.equal(y, data.labels[:3])
    pixel = int(data.images[1, 2, 3, 4])
    assert float(x[1, 2, 3, 4]) == pytest.approx((pixel / 255 - 0.3) / 0.3, abs=1e-6)
    assert torch.allclose(x[0, 0], (data.images[0, 0].float() / 255 - 0.1) / 0.5)


def test_batches_unlabeled_yields_index():
    bundle = synthetic_bundle([20, 20])
    s = make_splits(bundle, val_size=4, labeled_per_class=3, split_seed=0)
    b = Batches(s.unlabeled, 7, shuffle=True, mean=(0.5,), std=(0.25,))
    idx = torch.cat([i for _, i in b.epoch(0)])
    assert sorted(idx.tolist()) == sorted(s.unlabeled.index.tolist())
    with pytest.raises(ValueError):
        Batches(s.unlabeled, 0, shuffle=False, mean=(0.5,), std=(0.25,))


# --- host placement: DataLoader workers, the same batches ------------------------


def batches_of(batches: Batches, epochs: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for e in range(epochs) for x, y in batches.epoch(e)]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("rank", [0, 1])
def test_host_placement_with_workers_gives_the_batches_of_the_resident_path(workers, rank):
    data = synthetic_set([30, 25, 20], c=3, size=8)
    common = dict(shuffle=True, drop_last=False, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3,
                  augment=BatchAugment(crop_padding=2, flip=True), rank=rank, world_size=2)
    resident = Batches(data, 8, placement="device", **common)
    host = Batches(data, 8, placement="host", workers=workers, **common)
    assert resident.resident and not host.resident
    expected, got = batches_of(resident), batches_of(host)  # two epochs: persistent workers serve both
    assert len(got) == len(expected) == 2 * len(resident)
    for (x, y), (ex, ey) in zip(got, expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_host_placement_for_unlabeled_sets_and_evaluation_order():
    bundle = synthetic_bundle([20, 20])
    s = make_splits(bundle, val_size=4, labeled_per_class=3, split_seed=0)
    common = dict(shuffle=False, mean=(0.5,), std=(0.25,))
    host = Batches(s.unlabeled, 7, placement="host", workers=2, **common)
    resident = Batches(s.unlabeled, 7, placement="device", **common)
    assert torch.equal(torch.cat([i for _, i in host.epoch(0)]), s.unlabeled.index)
    assert torch.equal(torch.cat([x for x, _ in host.epoch(0)]), torch.cat([x for x, _ in resident.epoch(0)]))


def test_auto_placement_holds_sets_on_a_cpu_device_and_rejects_unknown_placements():
    data = synthetic_set([4, 4])
    assert Batches(data, 2, shuffle=False, mean=(0.5,), std=(0.25,)).resident
    with pytest.raises(ValueError, match="placement must be auto, device or host"):
        Batches(data, 2, shuffle=False, mean=(0.5,), std=(0.25,), placement="gpu")


def test_data_info_statistics_must_be_on_the_unit_scale_per_channel():
    from mentor.data.types import DataInfoError

    with pytest.raises(DataInfoError, match=r"not on the \[0, 1\] scale"):
        DataInfo(num_classes=2, in_channels=1, image_size=(4, 4), mean=(127.5,), std=(0.2,))
    with pytest.raises(DataInfoError, match="and > 0"):
        DataInfo(num_classes=2, in_channels=1, image_size=(4, 4), mean=(0.5,), std=(0.0,))
    with pytest.raises(DataInfoError, match="1 values for 3 channels"):
        DataInfo(num_classes=2, in_channels=3, image_size=(4, 4), mean=(0.5,), std=(0.2,))


def test_a_source_with_statistics_on_the_pixel_scale_fails_located_at_the_source(workdir, write_yaml, capfd,
                                                                                  monkeypatch):
    from mentor import DataBundle as Bundle
    from mentor import hookimpl
    from mentor.cli import main
    from mentor.plugins import load_plugins

    class PixelScale:
        @hookimpl
        def register_data_sources(self, register):
            def pixels():
                info = DataInfo(2, 1, (4, 4), (127.0,), (60.0,))
                return Bundle(synthetic_set([8, 8]), synthetic_set([4, 4], seed=1), info)

            register("pixels", pixels)

    path = write_yaml({"name": "scale", "data": {"source": "pixels", "val_size": 4},
                       "models": {"m": {"name": "small_cnn"}}, "stages": [{"kind": "train", "model": "m"}]})
    plugins = load_plugins(extra=[PixelScale()])
    monkeypatch.setattr("mentor.plugins.default_plugins", lambda: plugins)
    code = main(["run", str(path)])
    err = capfd.readouterr().err
    assert code == 2
    assert "data.source: data source 'pixels': DataInfo.mean (127.0,) is not on the [0, 1] scale" in err
    assert "Traceback" not in err
