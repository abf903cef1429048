"""The algorithm core (`mas/`) stays torch and numpy only, with no I/O: it imports none of the
service's stack, and its source does not even mention files, processes, sockets or Redis."""

from __future__ import annotations

import json
import re
import subprocess
import sys

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
