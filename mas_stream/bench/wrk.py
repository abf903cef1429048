"""One closed-loop `wrk` window against one URL, its figures read from a Lua `done()` hook.

The hook prints one JSON line, so nothing depends on the layout of wrk's human-readable report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_MARK = "WRK_RESULT "
INSTALL_HINT = "the serving benchmarks need wrk: apt-get install wrk"

_DONE_HOOK = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\\n',
    MARK, summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class HttpRequest:
    """What every connection sends, over and over: a GET without `body`, else a POST."""

    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return "GET" if self.body is None else "POST"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    errors: dict[str, int]

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.duration_s


def wrk_executable() -> str | None:
    return shutil.which("wrk")


def lua_script(request: HttpRequest, body_file: Path | None, pause_ms: int = 0) -> str:
    """Sets the method, headers and body (read from a file: it may be binary), then the hook;
    with `pause_ms`, each connection waits that long after an answer (wrk's `delay()`), which
    paces the load below the server's maximum."""
    lines = [f"MARK = {json.dumps(RESULT_MARK)}", f"wrk.method = {json.dumps(request.method)}"]
    if pause_ms > 0:
        lines.append(f"function delay() return {int(pause_ms)} end")
    for name, value in request.headers.items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    if body_file is not None:
        lines += [
            f"local body_file = assert(io.open({json.dumps(str(body_file))}, 'rb'))",
            "wrk.body = body_file:read('*a')",
            "body_file:close()",
        ]
    return "\n".join(lines) + "\n" + _DONE_HOOK


def parse_result(stdout: str) -> WrkResult:
    line = next((text for text in stdout.splitlines() if text.startswith(RESULT_MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result line:\n{stdout}")
    raw: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
    return WrkResult(
        requests=int(raw["requests"]),
        duration_s=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
        mean_ms=raw["mean_us"] / 1e3,
        errors={name: int(count) for name, count in raw["errors"].items()},
    )


def run_wrk(
    base_url: str, request: HttpRequest, connections: int, seconds: int, pause_ms: int = 0
) -> WrkResult:
    """`wrk -c N -t min(N, 2) -d S`: N connections, each sending its next request on an answer
    (`pause_ms` after it). Latency is measured from sending, so a pause is not counted in it."""
    executable = wrk_executable()
    if executable is None:
        raise RuntimeError(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="mas-wrk-") as scratch:
        body_file = None
        if request.body is not None:
            body_file = Path(scratch) / "body"
            body_file.write_bytes(request.body)
        script = Path(scratch) / "request.lua"
        script.write_text(lua_script(request, body_file, pause_ms))
        command = [
            executable,
            f"-c{connections}",
            f"-t{min(connections, 2)}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            f"{base_url}{request.path}",
        ]
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    return parse_result(completed.stdout)
