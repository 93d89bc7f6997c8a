"""A hostile-input corpus: each case is a file or an override a user (or an attacker) might write, and
the CLI must answer it with exit 2, a location and a message that says what is wrong, never a
traceback, a hang or a file written outside mentor's folders (issue 16)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from mentor.cli import main

GOOD = {
    "name": "hostile",
    "data": {"source": "fashion_mnist", "val_size": 100},
    "models": {"teacher": {"name": "small_cnn"}, "student": {"name": "small_cnn"}},
    "stages": [
        {"name": "teacher", "kind": "train", "model": "teacher", "epochs": 1},
        {"name": "student", "kind": "distill", "teacher": "teacher", "student": "student", "epochs": 1,
         "losses": [{"name": "cross_entropy", "weight": 0.5}, {"name": "kd", "weight": 0.5}]},
    ],
}

BOMB = """\
name: bomb
data: {source: fashion_mnist}
models:
  teacher:
    name: small_cnn
    params:
      a: &a [x, x, x, x, x, x, x, x, x, x]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
      h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
      i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
stages: [{kind: train, model: teacher}]
"""


#: Cases that could hang or exhaust memory run in a subprocess with a time limit; the rest in process.
GUARDED = {"alias-bomb", "recursive-alias", "deep-nesting", "override-alias-bomb"}


def validate(tmp_path, text: str | bytes, *overrides: str, guarded: bool = False, capsys=None):
    """(exit code, stderr) of ``mentor validate`` on ``text`` with ``--set`` overrides."""
    path = tmp_path / "experiment.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    argv = ["validate", str(path), *[arg for o in overrides for arg in ("--set", o)]]
    if guarded:
        done = subprocess.run([sys.executable, "-m", "mentor.cli", *argv], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        return done.returncode, done.stderr
    code = main(argv)
    return code, capsys.readouterr().err


def good(**changes) -> str:
    return yaml.safe_dump({**GOOD, **changes}, sort_keys=False)


# (id, file text, overrides, what the error must say: the location, then the message)
CASES = [
    ("alias-bomb", BOMB, (), "experiment.yaml:11:10:", "expands to more than 100,000 values"),
    ("recursive-alias", "name: r\ndata: &d {source: fashion_mnist, params: {x: *d}}\nstages: []\n", (),
     "experiment.yaml", "expands to more than"),
    ("deep-nesting", "name: n\nx: " + "[" * 5000 + "]" * 5000 + "\n", (), "experiment.yaml", "nested too deeply"),
    ("not-utf8", b"name: \xff\xfe\n", (), "experiment.yaml", "not UTF-8 text"),
    ("stage-traversal", good(), ("stages[0].name=../../../../tmp/x",), "stages[0].name",
     "is not a valid name: it names a folder"),
    ("stage-absolute", good(), ("stages[0].name=/tmp/x",), "stages[0].name", "is not a valid name"),
    ("stage-empty", good(), ("stages[0].name=''",), "stages[0].name", "is not a valid name"),
    ("stage-space", good(), ("stages[0].name=my stage",), "stages[0].name", "is not a valid name"),
    ("stage-name-too-long", good(), ("stages[0].name=" + "a" * 5000,), "stages[0].name",
     "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'... (5000 characters) is not a valid name"),
    ("experiment-traversal", good(name="../x"), (), "name", "is not a valid name"),
    ("infinite-lr", good(), ("stages[0].optimizer.lr=.inf",), "stages[0].optimizer.lr", "finite number"),
    ("nan-temperature", good(), ("stages[1].losses[1].params.temperature=.nan",),
     "stages[1].losses[1].params.temperature", "finite number"),
    ("infinite-weight", good(), ("stages[1].losses[0].weight=.inf",), "stages[1].losses[0].weight",
     "finite number"),
    ("weights-sum-zero", good(), ("stages[1].losses[0].weight=0", "stages[1].losses[1].weight=0"),
     "stages[1].losses", "the loss weights sum to 0"),
    ("seed-beyond-64-bits", good(seed=2**70), (), "seed", "less than 9223372036854775808"),
    ("negative-seed", good(), ("stages[0].seed=-1",), "stages[0].seed", "greater than or equal to 0"),
    ("duplicate-key", good().replace("name: hostile\n", "name: hostile\nseed: 1\nseed: 2\n"), (),
     "experiment.yaml:3:1:", "duplicate key 'seed' (first given on line 2"),
    ("python-object-tag", "name: !!python/object/apply:os.system [echo pwned]\nstages: []\n", (),
     "experiment.yaml:1:7:", "could not determine a constructor for the tag"),
    ("empty-file", "", (), "experiment.yaml", "the file must hold a mapping"),
    ("top-level-list", "- name: x\n", (), "experiment.yaml", "the file must hold a mapping"),
    ("infinite-warmup", good(), ("stages[0].schedule.warmup_epochs=.inf",), "stages[0].schedule.warmup_epochs",
     "finite number"),
    ("override-index-out-of-range", good(), ("stages[9].epochs=1",), "stages[9].epochs", "index out of range"),
    ("unknown-model", good(), ("stages[0].model=nope",), "stages[0].model", "unknown model 'nope'"),
    ("override-alias-bomb", good(), ("models.teacher.params.x=" + "[&a [x,x,x,x,x,x,x,x,x,x]," + ",".join(
        f"&{b} [{','.join(['*' + a] * 10)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)) + "]",),
     "--set: models.teacher.params.x:", "the value expands to more than 100,000 values"),
    ("override-object-tag", good(), ("name=!!python/object/apply:os.system [ls]",), "--set: name:",
     "could not determine a constructor for the tag"),
    ("yes-for-epochs", good(), ("stages[0].epochs=yes",), "--set: stages[0].epochs:",
     "Input should be a valid integer"),
    ("true-for-temperature", good(), ("stages[1].losses[1].params.temperature=on",),
     "stages[1].losses[1].params.temperature", "Input should be a valid number"),
    ("init-of-another-architecture", good(), ("models.student.params.channels=[4, 8]", "stages[1].init=teacher"),
     "stages[1].init", "stage 'teacher' trained models.teacher (small_cnn), whose weights do not fit "
     "models.student (small_cnn, other layer shapes)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.slow
def test_hostile_file_is_refused_with_a_located_message(tmp_path, capsys, case):
    name, text, overrides, where, message = case
    code, err = validate(tmp_path, text, *overrides, guarded=name in GUARDED, capsys=capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert where in err and message in err, err


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path, capsys):
    code, err = validate(tmp_path, good() + "# " + "x" * (1 << 20) + "\n", capsys=capsys)
    assert code == 2
    assert "an experiment file may have at most 1,048,576" in err


def test_a_bounded_file_with_aliases_still_loads(tmp_path, capsys):
    """Aliases are fine in moderation: the bound is on the expanded size, not on their use."""
    text = """\
name: aliases
data: {source: fashion_mnist, val_size: 100}
models: {teacher: {name: small_cnn}, student: {name: small_cnn}}
stages:
  - {name: teacher, kind: train, model: teacher, epochs: 1, optimizer: &opt {lr: 0.05, momentum: 0.9}}
  - {name: student, kind: distill, teacher: teacher, student: student, epochs: 1, optimizer: *opt}
"""
    code, err = validate(tmp_path, text, capsys=capsys)
    assert code == 0, err


# --- runtime faults ------------------------------------------------------------------------------


def test_a_dead_tracking_server_fails_fast_with_its_address(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiment.yaml").write_text(good())
    code = main(["run", "experiment.yaml", "--set", f"tracking.uri=http://user:secret@127.0.0.1:{port}",
                 "--set", "data.params.root=" + str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"cannot reach the MLflow tracking server at http://user:***@127.0.0.1:{port} (127.0.0.1:{port})" in err
    assert "secret" not in err and "Traceback" not in err


def test_a_full_disk_names_the_file_and_says_so(tmp_path, monkeypatch):
    """torch reports a full disk as '[enforce fail at inline_container.cc:672] unexpected pos'; mentor says
    what it is and where, and leaves no partial file behind."""
    import collections

    import torch

    from mentor.engine import checkpoint

    def full(obj, handle):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4544 vs 4432")

    monkeypatch.setattr(torch, "save", full)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(10, 10, 0))
    target = tmp_path / "ckpt" / "checkpoint.pt"
    with pytest.raises(checkpoint.StateWriteError) as err:
        checkpoint.save_atomic({"x": 1}, target)
    assert str(err.value) == f"{target}: cannot write it: no space left on the device (0 bytes free)"
    assert list((tmp_path / "ckpt").iterdir()) == []


@pytest.mark.parametrize(("override", "where", "message"), [
    ("data.val_size=60000", "data.val_size", "60000 leaves no training rows (the train set has 60000)"),
    ("data.labeled_per_class=6000", "data.labeled_per_class", "6000 but after taking 100 validation rows"),
    ("data.test_size=20000", "data.test_size", "20000 but the test set has 10000 rows"),
    ("stages[0].train_subset=70000", "stages[0].train_subset", "70000 is more than the 59900 labeled"),
], ids=["val_size", "labeled_per_class", "test_size", "train_subset"])
def test_sizes_larger_than_the_data_are_located_before_any_run(tmp_path, capsys, monkeypatch, override, where,
                                                               message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiment.yaml").write_text(good())
    code = main(["run", "experiment.yaml", "--set", override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"experiment.yaml: {where}: {message}" in err or f"--set: {where}: {message}" in err, err
    assert no_runs(tmp_path)  # refused before the parent run opened: nothing left RUNNING


def no_runs(workdir) -> bool:
    from mlflow import MlflowClient

    db = workdir / "mlruns" / "mlflow.db"
    if not db.exists():
        return True
    c = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return not c.search_runs([e.experiment_id for e in c.search_experiments()])


def _png_claiming(path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb as PIL sees one)."""
    import struct
    import zlib

    from PIL import Image

    Image.new("L", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # the IHDR chunk's type and body
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fault", ["truncated", "bomb"])
def test_an_unreadable_image_in_an_image_folder_is_named(tmp_path, capsys, monkeypatch, fault):
    """PIL's 'image file is truncated' and its decompression-bomb error name no file; mentor's does."""
    from PIL import Image

    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("L", (8, 8), color=40 * i + (100 if label == "b" else 0)).save(folder / f"{i}.png")
    bad = tmp_path / "images" / "train" / "b" / "1.png"
    if fault == "truncated":
        Image.effect_noise((64, 64), 50).save(bad)
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        _png_claiming(bad, 20_000, 20_000)
    config = {**GOOD, "data": {"source": "image_folder", "val_size": 2,
                               "params": {"root": "images", "image_size": 8, "grayscale": True}}}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    code = main(["run", "experiment.yaml"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{bad}: not a readable image" in err and "Traceback" not in err, err
    assert ("truncated" in err) if fault == "truncated" else ("DecompressionBombError" in err)
    assert no_runs(tmp_path)
