"""The memory benchmark end to end, at its shortest: every phase and process reported, and the
refusals it provokes are the budget's (413 for the bomb, 503 for the upload beyond it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mas_stream.bench import memory

PHASES = [
    "idle",
    "bomb upload (0.23 GiB of zeros)",
    "predict load: c16, one-row JSON, 2 s",
    "float32 npz upload at the cap",
    "three float32 uploads at once",
    "predict 10,000 rows, OIP binary",
]
STATUSES = {
    "bomb upload (0.23 GiB of zeros)": [413],
    "float32 npz upload at the cap": [202],
    "three float32 uploads at once": [202, 202, 503],
    "predict 10,000 rows, OIP binary": [200],
}


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
def test_a_quick_run_reports_every_phase_of_every_process(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    command = [sys.executable, "-m", "mas_stream.bench.memory", "--quick", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["roles"] == sorted(memory.ROLES)
    assert [phase["phase"] for phase in report["phases"]] == PHASES
    for phase in report["phases"]:
        assert phase["phase"] in completed.stdout
        assert set(phase["memory_mib"]) == set(memory.ROLES), phase
        for figures in phase["memory_mib"].values():
            assert set(figures) == {"rss", "peak", "start", "idle"}
            assert figures["rss"] > 0 and figures["peak"] > 0 and figures["start"] > 0
        assert sorted(phase.get("statuses", [])) == STATUSES.get(phase["phase"], []), phase
    load = report["phases"][2]
    assert load["req_per_s"] > 0 and load["errors"] == 0
