"""Whether one large predict starves small ones: single-row latency with and without it in flight.

`mas-stream bench-large-request [--quick] [--rows N] [--large-json] [--json OUT]`: `wrk` sends
one-row `/v1/predict` requests (the serving benchmark's row) at concurrency 4 against
`mas-stream serve` for one window alone and one window while a client thread keeps a
`--rows`-row OIP binary predict (with `--large-json`, a `/v1/predict` JSON one) in flight back
to back. The service computes a large request in `MAS_MAX_BATCH`-row
slices with other requests served between them; the figure to watch is the single-row p99.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np

from mas_stream.bench.report import command_main, finish, wrk_missing
from mas_stream.bench.serving_requests import HEADER_LENGTH, WIDTH, benchmark_inputs, http_requests
from mas_stream.bench.serving_servers import running_service
from mas_stream.bench.wrk import WrkResult, run_wrk

CONNECTIONS: Final = 4
LARGE_ROWS: Final = 50_000


def large_request(rows: int, as_json: bool) -> tuple[str, bytes, dict[str, str]]:
    """Path, body and headers of a `rows`-row predict: OIP binary (4 bytes a number) or
    /v1/predict JSON (about 20)."""
    array = np.random.default_rng(1).random((rows, WIDTH), dtype=np.float32)
    if as_json:
        body = json.dumps({"inputs": array.tolist()}).encode()
        return "/v1/predict", body, {"Content-Type": "application/json"}
    raw = array.tobytes()
    tensor = {"name": "input", "shape": [rows, WIDTH], "datatype": "FP32"}
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return "/v2/models/mas/infer", header + raw, headers


class _LargeRequests:
    """Keeps one large request in flight until stopped; records how long each took."""

    def __init__(self, url: str, rows: int, as_json: bool) -> None:
        path, self._body, self._headers = large_request(rows, as_json)
        self._url = f"{url}{path}"
        self._stop = threading.Event()
        self.seconds: list[float] = []
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _LargeRequests:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                response = client.post(self._url, content=self._body, headers=self._headers)
                if response.status_code == 200:
                    self.seconds.append(time.perf_counter() - started)
                else:
                    self.failures += 1


def _window(result: WrkResult) -> dict[str, Any]:
    return {
        "requests_per_second": result.requests_per_second,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
    }


def measure(rows: int, seconds: int, as_json: bool = False) -> dict[str, Any]:
    small = http_requests(benchmark_inputs())["v1-json"]
    settings = {
        "MAS_SAMPLE_RATE": "1.0",
        "MAS_MAX_ROWS": str(max(rows, 1)),
        "MAS_MAX_BODY_BYTES": str(rows * WIDTH * (24 if as_json else 4) + (1 << 20)),
    }
    with (
        tempfile.TemporaryDirectory(prefix="mas-bench-large-") as scratch,
        running_service(Path(scratch) / "data", settings) as url,
    ):
        run_wrk(url, small, CONNECTIONS, 1)  # warm-up
        alone = run_wrk(url, small, CONNECTIONS, seconds)
        with _LargeRequests(url, rows, as_json) as large:
            while not large.seconds and not large.failures:  # one full pass first
                time.sleep(0.05)
            beside = run_wrk(url, small, CONNECTIONS, seconds)
    return {
        "connections": CONNECTIONS,
        "seconds": seconds,
        "large_rows": rows,
        "large_format": "v1-json" if as_json else "oip-binary",
        "single_row_alone": _window(alone),
        "single_row_beside_large": _window(beside),
        "large_requests_completed": len(large.seconds),
        "large_request_seconds_median": float(np.median(large.seconds)) if large.seconds else None,
        "large_request_failures": large.failures,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"one-row /v1/predict at concurrency {report['connections']}, "
        f"{report['seconds']} s windows; large request: {report['large_rows']} rows, "
        + report["large_format"],
        f"{'window':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for key, label in (
        ("single_row_alone", "single rows alone"),
        ("single_row_beside_large", "single rows, large one in flight"),
    ):
        window = report[key]
        lines.append(
            f"{label:<34}{window['requests_per_second']:>9.0f}"
            f"{window['p50_ms']:>9.1f}{window['p99_ms']:>9.1f}"
        )
    median = report["large_request_seconds_median"]
    lines.append(
        f"large requests answered: {report['large_requests_completed']}"
        + ("" if median is None else f", median {median:.2f} s each")
        + f", failed: {report['large_request_failures']}"
    )
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="2 s windows, a 5,000-row request.")
    parser.add_argument("--rows", type=int, default=LARGE_ROWS, help="Rows of the large request.")
    parser.add_argument("--duration", type=int, default=8, help="Seconds per wrk window.")
    parser.add_argument(
        "--large-json", action="store_true", help="Send the large request as /v1/predict JSON."
    )
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")


def run(args: argparse.Namespace) -> int:
    if wrk_missing():
        return 1
    rows, seconds = (5_000, 2) if args.quick else (args.rows, args.duration)
    report = measure(rows, seconds, args.large_json)
    return finish(report, format_report, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("mas-stream bench-large-request", __doc__, configure, run, argv)


if __name__ == "__main__":
    sys.exit(main())
