"""The worker pace benchmark end to end, at its shortest: every figure reported, none judged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mas_stream.bench import worker_pace

SAMPLE_FIELDS = {"t_s", "lag_entries", "omega_rows", "forwarded_rows"}


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
def test_a_short_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "pace.json"
    command = [sys.executable, "-m", "mas_stream.bench.worker_pace", "--quick", "--models", "mlp"]
    command += ["--workers", "1,2", "--duration", "2", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(row["model"], row["workers"]) for row in report["drain"]] == [("mlp", 1), ("mlp", 2)]
    assert all(row["rows_per_s"] > 0 for row in report["drain"])
    (serving,) = report["serving"]
    assert serving["wrk"]["req_per_s"] > 0 and sum(serving["wrk"]["errors"].values()) == 0
    assert len(serving["samples"]) >= 2
    assert all(set(sample) == SAMPLE_FIELDS for sample in serving["samples"])
    summary = serving["summary"]
    assert set(summary) == set(worker_pace.summarize(serving["samples"], 1, 1.0))
    assert summary["forwarded_rows_per_s"] > 0 and summary["omega_rows_per_s"] > 0
    for name in summary:
        assert name in completed.stdout
    assert set(report["ratios"]) == set(worker_pace.ratios(report))
    assert all(ratio > 0 for ratio in report["ratios"].values())
