"""The algorithm core (`mas/`) stays torch and numpy only, with no I/O: it imports none of the
service's stack, and its source does not even mention files, processes, sockets or Redis."""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys

import pytest

from tests.support.paths import ROOT

CORE = ROOT / "mas"

FORBIDDEN_MODULES = {
    "redis",
    "fastapi",
    "starlette",
    "safetensors",
    "sklearn",
    "mlxtend",
    "matplotlib",
    "httpx",
    "pydantic",
    "prometheus_client",
    "uvicorn",
    "mas_stream",
    "service",
    "worker",
}
FORBIDDEN_WORDS = re.compile(
    r"\bopen\(|\b(?:subprocess|socket|redis|requests|urllib|pathlib)\b", re.IGNORECASE
)

# Runs in a fresh interpreter: what torch and numpy load themselves is not the core's doing.
IMPORT_EVERY_CORE_MODULE = """
import importlib, json, pkgutil, sys
import numpy, torch
before = set(sys.modules)
import mas
names = ["mas"] + [m.name for m in pkgutil.walk_packages(mas.__path__, "mas.")]
for name in names:
    importlib.import_module(name)
added = sorted({name.partition(".")[0] for name in set(sys.modules) - before})
print(json.dumps({"imported": names, "added": added}))
"""


def test_importing_the_core_loads_nothing_beyond_torch_and_numpy() -> None:
    finished = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_CORE_MODULE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    report = json.loads(finished.stdout.splitlines()[-1])
    assert "mas.importance" in report["imported"]
    assert "mas.penalty" in report["imported"]
    assert sorted(FORBIDDEN_MODULES & set(report["added"])) == []


def test_core_source_does_not_talk_about_io() -> None:
    sources = sorted(CORE.rglob("*.py"))
    assert CORE / "importance.py" in sources
    found = [
        f"{path.relative_to(ROOT)}:{number}: {match.group(0)}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        for match in FORBIDDEN_WORDS.finditer(line)
    ]
    assert found == []


def _names_shown_to_type_checkers() -> dict[str, str]:
    """name -> module, from the `if TYPE_CHECKING:` imports of mas/__init__.py."""
    tree = ast.parse((CORE / "__init__.py").read_text(encoding="utf-8"))
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    return {
        alias.name: str(statement.module)
        for statement in guarded.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }


def test_every_public_name_loads_what_type_checkers_are_shown() -> None:
    """`mas.X` is loaded on first use: the loader's table and the typed imports must agree."""
    import mas

    shown = _names_shown_to_type_checkers()
    assert "build_model" in shown
    assert sorted(mas.__all__) == sorted(shown)
    for name, module in shown.items():
        assert getattr(mas, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'nothing_of_that_name'"):
        _ = mas.nothing_of_that_name
