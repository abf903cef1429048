"""The serving benchmark end to end, at its shortest: every figure reported, none judged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mas_stream.bench import serving, serving_rows

ROWS = "v1-json,oip-binary,ping"
MEASURED = ["bare-json", "bare-bytes", "ping", "v1-json", "oip-binary"]
PACED = ["bare-json@half", "v1-json@half"]
NO_WRK = "wrk is not installed (apt-get install wrk)"


def test_selected_rows_bring_the_baselines_of_their_ratios() -> None:
    names = [row.name for row in serving.selected_rows(ROWS.split(","))]
    assert names == MEASURED
    assert set(serving_rows.PACED_ROWS) <= set(names)


def test_missing_wrk_is_one_line_naming_the_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(serving, "wrk_executable", lambda: None)
    assert serving.main(["--quick"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "the serving benchmarks need wrk: apt-get install wrk"
    ]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason=NO_WRK)
def test_every_row_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    command = [sys.executable, "-m", "mas_stream.bench.serving", "--duration", "1"]
    command += ["--concurrency", "1", "--rows", ROWS, "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [r["row"] for r in results] == [
        "bare-json",
        *PACED[:1],
        "bare-bytes",
        "ping",
        "v1-json",
        *PACED[1:],
        "oip-binary",
    ]
    for result in results:
        paced = result["row"] in PACED
        assert result["concurrency"] == (serving_rows.PACED_CONNECTIONS if paced else 1)
        if paced:  # paced below the row's own rate: its share of that rate is the ratio
            assert result["pause_ms"] >= 1 and 0 < result["ratio"] < 1.5, result
        assert result["req_per_s"] > 0, result
        assert 0 < result["p50_ms"] <= result["p99_ms"], result
        assert result["ratio"] > 0, result
        assert result["row"] in completed.stdout
    assert {r["row"]: r["ratio"] for r in results}["bare-json"] == 1.0
