"""The Redis memory benchmark end to end, at its shortest: every figure reported, none judged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mas_stream.bench import redis_memory

SAMPLE_FIELDS = {
    "t_s",
    "redis_used_bytes",
    "stream_bytes",
    "stream_entries",
    "lag_entries",
    "aof_bytes",
    "aof_rewrite_in_progress",
}


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
def test_a_short_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "redis-memory.json"
    command = [sys.executable, "-m", "mas_stream.bench.redis_memory", "--duration", "3"]
    command += ["--concurrency", "4", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["wrk"]["req_per_s"] > 0 and sum(report["wrk"]["errors"].values()) == 0
    assert report["forwarded_rows"] > 0
    assert len(report["samples"]) >= 2
    assert all(set(sample) == SAMPLE_FIELDS for sample in report["samples"])
    assert all(sample["redis_used_bytes"] > 0 for sample in report["samples"])
    assert set(report["summary"]) == set(redis_memory.summarize(report["samples"], 1.0))
    for name in report["summary"]:
        assert name in completed.stdout
    probe = report["latency_probe"]
    assert set(probe) == set(redis_memory.probe_summary([]))
    assert probe["probes_during_rewrite"] + probe["probes_outside_rewrite"] >= 4
    for name in probe:
        assert name in completed.stdout
