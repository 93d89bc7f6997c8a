"""The command starts at once: `mentor --help` imports neither torch nor MLflow, and every user error class the
CLI says in one line is named where it is defined."""

from __future__ import annotations

import importlib
import subprocess
import sys

from mentor import cli


def test_help_imports_neither_torch_nor_mlflow():
    code = ("import sys\nfrom mentor.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'mlflow', 'polars', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_every_user_error_the_cli_names_exists_where_it_says():
    for name in [*cli.USER_ERRORS, "mentor.config.errors.ConfigError", "mentor.engine.loop.TrainingDiverged"]:
        module, _, qualname = name.rpartition(".")
        cls = getattr(importlib.import_module(module), qualname)
        assert issubclass(cls, Exception) and cls.__module__ == module, name
