"""Resident memory of every process of `mas-stream serve`, idle, under load, and while it takes
the largest requests and uploads it accepts.

`mas-stream bench-memory [--quick] [--json OUT]` (also `python -m mas_stream.bench.memory`):
one `mas-stream serve` (forwarding rate 1.0) on the 784-256-256 MLP; per phase the kernel's peak
resident set (VmHWM, reset through /proc/PID/clear_refs as the phase starts) and the resident
set at its end (VmRSS) of the API, both workers, Redis and the supervisor. The large predict
needs MAS_MAX_ROWS and MAS_MAX_BODY_BYTES raised for the run (its OIP binary body is 4 bytes a
value); everything else runs with the defaults. Uploads are `.npz` files whose arrays take
exactly MAS_MAX_UPLOAD_BYTES, float32 and float64, one alone and three at once, and the
issue's bomb: 0.9 MB that expands to 0.92 GiB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np

from mas_stream.bench.large_request import large_request
from mas_stream.bench.proc_memory import ServiceProcesses
from mas_stream.bench.report import command_main, finish, wrk_missing
from mas_stream.bench.serving import _positive_seconds, check_and_warm_up, machine
from mas_stream.bench.serving_requests import WIDTH, benchmark_inputs, http_requests
from mas_stream.bench.serving_servers import running_service
from mas_stream.bench.wrk import run_wrk
from mas_stream.settings import Settings

CONCURRENCY: Final = 16
LABEL_BYTES: Final = 8
# float64 zeros: 0.92 GiB of arrays in about 0.9 MB of .npz, the issue's; --quick's is smaller.
BOMB_ROWS: Final = 157_000
QUICK_BOMB_ROWS: Final = 40_000
# (large predict rows, load seconds, MAS_MAX_UPLOAD_BYTES, MAS_UPLOAD_MEMORY_BYTES)
FULL: Final = (
    100_000,
    8,
    int(Settings.model_fields["max_upload_bytes"].default),
    int(Settings.model_fields["upload_memory_bytes"].default),
)
QUICK: Final = (10_000, 2, 32 << 20, 64 << 20)
_MIB: Final = 2**20
_TIMEOUT_S: Final = 300.0
_DEFAULT_BODY_CAP: Final = int(Settings.model_fields["max_body_bytes"].default)


def npz_at(nbytes: int, dtype: type[np.floating]) -> bytes:
    """A compressed .npz whose arrays x [N, 784] and y [N] take at most `nbytes`, N as large as
    that allows; x is zeros but for the benchmark row, so it compresses (the body stays small)."""
    rows = nbytes // (WIDTH * np.dtype(dtype).itemsize + LABEL_BYTES)
    x = np.zeros((rows, WIDTH), dtype=dtype)
    x[0] = benchmark_inputs()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=np.arange(rows, dtype=np.int64) % 10)
    return buffer.getvalue()


def bomb(rows: int) -> bytes:
    """float64 zeros written through the compressor in chunks: never whole in memory here."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f8", "fortran_order": False, "shape": (rows, WIDTH)}
            np.lib.format.write_array_header_1_0(member, header)
            chunk, left = bytes(16 * _MIB), rows * WIDTH * 8
            while left > 0:
                member.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
        with archive.open("y.npy", "w") as member:
            np.lib.format.write_array(member, np.arange(rows, dtype=np.int64) % 10)
    return buffer.getvalue()


@dataclass(frozen=True)
class Phase:
    name: str
    run: Callable[[httpx.Client], dict[str, Any]]


def _idle(_: httpx.Client) -> dict[str, Any]:
    time.sleep(3)
    return {}


def _uploads(name: str, content: bytes, copies: int = 1) -> Phase:
    """`copies` uploads of `content` at once, each under its own task name."""

    def run(client: httpx.Client) -> dict[str, Any]:
        def send(index: int) -> httpx.Response:
            files = {"file": ("data.npz", content, "application/octet-stream")}
            form = {"name": f"{name.split()[0]}-{index}"}
            return client.post("/v1/tasks", data=form, files=files)

        with ThreadPoolExecutor(max_workers=copies) as pool:
            answers = list(pool.map(send, range(copies)))
        for answer in answers:  # the trainer has nothing to learn from zeros; stopping is quicker
            if answer.status_code == 202:
                client.delete(f"/v1/jobs/{answer.json()['job_id']}")
        return {"body_bytes": len(content), "statuses": [a.status_code for a in answers]}

    return Phase(name, run)


def _post(name: str, path: str, body: bytes, headers: dict[str, str]) -> Phase:
    def run(client: httpx.Client) -> dict[str, Any]:
        status = client.post(path, content=body, headers=headers).status_code
        return {"body_bytes": len(body), "statuses": [status]}

    return Phase(name, run)


def _json_rows_at_cap(cap: int) -> tuple[int, bytes]:
    """As many copies of the benchmark row as fit a JSON body of `cap` bytes."""
    row = json.dumps([round(float(v), 4) for v in benchmark_inputs()])
    rows = (cap - 64) // (len(row) + 1)
    return rows, ('{"inputs": [' + ",".join([row] * rows) + "]}").encode()


def groups(large_rows: int, seconds: int, upload_bytes: int, quick: bool) -> list[list[Phase]]:
    """Phases by service, each group in a fresh `mas-stream serve`, smallest first: memory an
    earlier phase freed but the allocator kept may be reused by a later one, so a phase's figure
    is its process's peak, over the idle figure of the same service. The JSON predict, whose
    Python objects stay in the allocator, comes last. --quick runs one service and leaves it and
    the float64 upload out."""
    request = http_requests(benchmark_inputs())["v1-json"]
    path, body, headers = large_request(large_rows, as_json=False)
    float32 = npz_at(upload_bytes, np.float32)
    bomb_rows = QUICK_BOMB_ROWS if quick else BOMB_ROWS

    def load(client: httpx.Client) -> dict[str, Any]:
        result = run_wrk(str(client.base_url).rstrip("/"), request, CONCURRENCY, seconds)
        return {"req_per_s": result.requests_per_second, "errors": sum(result.errors.values())}

    serving = [
        Phase("idle", _idle),
        _uploads(
            f"bomb upload ({bomb_rows * WIDTH * 8 / 2**30:.2f} GiB of zeros)", bomb(bomb_rows)
        ),
        Phase(f"predict load: c{CONCURRENCY}, one-row JSON, {seconds} s", load),
        _post(f"predict {large_rows:,} rows, OIP binary", path, body, headers),
    ]
    uploads = [Phase("idle", _idle), _uploads("float32 npz upload at the cap", float32)]
    if not quick:
        json_rows, json_body = _json_rows_at_cap(_DEFAULT_BODY_CAP)
        json_type = {"Content-Type": "application/json"}
        name = f"predict {json_rows:,} rows, JSON at the body cap"
        serving.append(_post(name, "/v1/predict", json_body, json_type))
        uploads.append(_uploads("float64 npz upload at the cap", npz_at(upload_bytes, np.float64)))
    uploads.append(_uploads("three float32 uploads at once", float32, copies=3))
    if quick:
        return [[*serving[:3], *uploads[1:], serving[3]]]
    return [serving, uploads]


def _measure_group(
    directory: Path, settings: dict[str, str], phases: list[Phase]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Each phase from a peak reset; memory in MiB per process: start, peak, rss at the end."""
    results: list[dict[str, Any]] = []
    with (
        running_service(directory, settings) as base_url,
        httpx.Client(base_url=base_url, timeout=_TIMEOUT_S) as client,
    ):
        check_and_warm_up(base_url, "v1-json", http_requests(benchmark_inputs())["v1-json"])
        processes = ServiceProcesses.under(os.getpid())
        for phase in phases:
            processes.reset_peaks()
            before, started = processes.read(), time.monotonic()
            figures = phase.run(client)
            elapsed = time.monotonic() - started
            memory = processes.read()
            for name, figures_of in memory.items():
                figures_of["start"] = before[name]["rss"]
                figures_of["idle"] = (results[0]["memory_mib"] if results else memory)[name]["rss"]
            results.append({"phase": phase.name, "seconds": elapsed, **figures,
                            "memory_mib": memory})  # fmt: skip
            print(f"{phase.name}: {_cells(results[-1])}", file=sys.stderr, flush=True)
    return sorted(processes.pids), results


def measure(quick: bool, seconds: int | None) -> dict[str, Any]:
    large_rows, load_seconds, upload_bytes, budget = QUICK if quick else FULL
    settings = {
        "MAS_SAMPLE_RATE": "1.0",
        "MAS_EPOCHS": "1",
        "MAS_MAX_ROWS": str(large_rows),
        "MAS_MAX_BODY_BYTES": str(max(large_rows * WIDTH * 4 + _MIB, _DEFAULT_BODY_CAP)),
        "MAS_MAX_UPLOAD_BYTES": str(upload_bytes),
        "MAS_UPLOAD_MEMORY_BYTES": str(budget),
    }
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mas-memory-bench-") as scratch:
        for index, phases in enumerate(
            groups(large_rows, seconds or load_seconds, upload_bytes, quick)
        ):
            roles, measured = _measure_group(Path(scratch) / f"service-{index}", settings, phases)
            results += measured
    return {"settings": settings, "roles": roles, "phases": results}


ROLES: Final = ("api", "importance", "trainer", "redis", "supervisor")


def _cells(result: dict[str, Any]) -> str:
    memory = result["memory_mib"]
    api = memory["api"]
    return f"{api['peak'] - api['idle']:>+8.0f} " + " ".join(
        f"{memory[r]['peak']:>6.0f}/{memory[r]['rss']:<6.0f}" if r in memory else f"{'-':^13}"
        for r in ROLES
    )


def format_report(report: dict[str, Any]) -> str:
    """Per phase: the API's peak over its start, then per process its peak / its end, MiB."""
    header = f"{'phase':<44} {'api +peak':>8} " + " ".join(f"{r:^13}" for r in ROLES)
    header += "  statuses"
    lines = [
        "MiB; api +peak: the API's peak during the phase less its resident set when idle;",
        "per process: peak during the phase / resident set at its end",
        header,
        "-" * len(header),
    ]
    for result in report["phases"]:
        statuses = ",".join(map(str, result.get("statuses", [])))
        lines.append(f"{result['phase']:<44} {_cells(result)}  {statuses}")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one service, a 10,000-row predict, 32 MiB uploads (MAS_MAX_UPLOAD_BYTES), "
        "2 s of load",
    )
    parser.add_argument("--duration", type=_positive_seconds, metavar="S", help="seconds of load")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")


def run(args: argparse.Namespace) -> int:
    if wrk_missing():
        return 1
    report: dict[str, Any] = {"argv": sys.argv, "machine": machine()}
    report.update(measure(args.quick, args.duration))
    return finish(report, format_report, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("mas-stream bench-memory", __doc__, configure, run, argv)


if __name__ == "__main__":
    sys.exit(main())
