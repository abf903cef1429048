"""The large-request benchmark at its shortest: every figure reported, none judged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NO_WRK = "wrk is not installed (apt-get install wrk)"


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
def test_every_figure_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "large.json"
    command = [sys.executable, "-m", "mas_stream.bench.large_request", "--quick"]
    completed = subprocess.run(
        [*command, "--rows", "2000", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(out.read_text())
    for window in ("single_row_alone", "single_row_beside_large"):
        assert report[window]["requests_per_second"] > 0
        assert report[window]["p99_ms"] >= report[window]["p50_ms"] > 0
    assert report["large_requests_completed"] >= 1
    assert report["large_request_failures"] == 0
    assert "large one in flight" in completed.stdout
