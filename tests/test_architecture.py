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
