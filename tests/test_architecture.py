"""The architecture rules hold: import-linter's contracts pass and cover every module of the core."""

from __future__ import annotations

import ast
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import mentor

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_plugins_contract_forbids_every_module_of_the_core():
    """A new module under core/ cannot slip past the plugins' one door."""
    contract = next(c for c in _contracts() if "public API only" in c["name"])
    modules = {f"mentor.{m.name}" for m in pkgutil.iter_modules(mentor.__path__)}
    assert modules - {"mentor.__main__"} <= set(contract["forbidden_modules"])


def test_plugins_import_only_the_public_api():
    """Every `from mentor... import` under plugins/ names `mentor` itself."""
    offenders = []
    for path in (ROOT / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.startswith("mentor.")]
    assert offenders == []


def test_public_names_exist():
    missing = [name for name in mentor.__all__ if not hasattr(mentor, name)]
    assert missing == []


def test_import_linter_contracts_pass():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency (pip install -e '.[dev]')"
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


def test_every_public_name_is_documented_in_the_authors_guide():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    undocumented = [name for name in mentor.__all__ if f"`{name}`" not in guide and f"`{name}(" not in guide]
    assert undocumented == []


#: The file writes in core/ and plugins/ that are not resume state, each with why it may write directly.
#: Everything else goes through mentor.engine.checkpoint's atomic writers (write-then-rename), so a kill
#: leaves the old file or the new one, never half of one.
DIRECT_WRITES = {
    ("core/engine/checkpoint.py", "fdopen"): "the atomic writer itself (a temporary file, renamed)",
    ("core/engine/checkpoint.py", "save"): "torch.save into the atomic writer's handle",
    ("core/pool_scores.py", "write_parquet"): "a scores chunk into the atomic writer's handle",
    ("core/shipping.py", "save"): "torch.save into an in-memory buffer (the model's size)",
    ("core/context_recording.py", "write_parquet"): "into an in-memory buffer for an artifact",
    ("core/context_recording.py", "touch"): "an empty marker: there is no half of it",
    ("core/tracking/tracker.py", "write_bytes"): "a temporary folder handed to MLflow",
    ("core/pipeline.py", "write_bytes"): "an empty probe that checkpoint_dir is writable",
    ("core/deploy/predict.py", "open"): "predictions.partial, renamed when complete (resume reads its rows)",
    ("core/cli.py", "write_text"): "a report file the user asked for (--out), not state",
    ("core/inspect_commands.py", "write_text"): "a report file the user asked for (--output), not state",
}
#: file-writing calls (save: torch.save only)
WRITERS = {"write_text", "write_bytes", "write_parquet", "write_csv", "write_ipc", "save", "touch", "fdopen"}


def test_state_is_written_atomically():
    """No code under core/ or plugins/ writes a file directly but the reviewed exceptions above."""
    found = set()
    for path in [*(ROOT / "core").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name == "save" and not (isinstance(node.func, ast.Attribute) and
                                       getattr(node.func.value, "id", "") == "torch"):
                continue  # a StageResult's or an MLflow model's own save, not torch.save
            if name.startswith("write_") and not node.args and not node.keywords:
                continue  # polars' write_csv() with no file returns the text
            writes_open = name == "open" and any(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                                 and set(a.value) & set("wax") for a in node.args[1:2])
            if name in WRITERS or writes_open:
                found.add((str(path.relative_to(ROOT)), name))
    assert found - set(DIRECT_WRITES) == set()
    assert set(DIRECT_WRITES) - found == set()  # an exception no longer needed is removed
