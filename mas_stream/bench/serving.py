"""How fast the service serves, next to a bare FastAPI + torch app serving the same weights.

`python -m mas_stream.bench.serving [--quick] [--json OUT]` (also `mas-stream bench-serving`):
closed-loop `wrk` windows, one 784-float row per request, against `mas-stream serve` (forwarding
on; forwarding off; micro-batching off), the baseline in `bench/bare_app.py`, and its trivial
GET /ping, which shows what the load generator itself can drive. One server runs at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any, Final

import httpx
import torch

from mas_stream.bench.serving_requests import benchmark_inputs, http_requests, predicted_class
from mas_stream.bench.serving_rows import (
    PACED_CONNECTIONS,
    PACED_FRACTION,
    PACED_ROWS,
    ROW_NAMES,
    ROWS,
    TARGETS,
    Row,
)
from mas_stream.bench.serving_servers import (
    benchmark_model,
    running_bare_app,
    running_service,
    save_bare_weights,
)
from mas_stream.bench.wrk import INSTALL_HINT, HttpRequest, run_wrk, wrk_executable

FULL_SECONDS: Final = 8
QUICK_SECONDS: Final = 2
FULL_CONCURRENCY: Final = (1, 16, 64)
QUICK_CONCURRENCY: Final = (1, 16)
_WARM_UP_REQUESTS: Final = 20


def check_and_warm_up(base_url: str, kind: str, request: HttpRequest) -> int | None:
    """A refused request must not be measured as a fast one; the first requests load lazily."""
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        for _ in range(_WARM_UP_REQUESTS):
            response = client.request(
                request.method, request.path, content=request.body, headers=request.headers
            )
            if response.status_code != 200:
                raise RuntimeError(f"{kind}: {response.status_code} {response.text[:300]}")
        return predicted_class(kind, response)


def selected_rows(names: Sequence[str]) -> list[Row]:
    """The named rows and the baselines their ratios need, in measuring order."""
    wanted = set(names) | {row.baseline for row in ROWS if row.name in names}
    return [row for row in ROWS if row.name in wanted]


def server(target: str, workdir: Path, weights: Path) -> AbstractContextManager[str]:
    if target == "bare":
        return running_bare_app(weights, workdir / "bare.log")
    return running_service(workdir / target, TARGETS[target])


def windows(row: Row, concurrency: Sequence[int]) -> Sequence[int]:
    """Every row at every concurrency; /ping only at the highest, where the ceiling matters."""
    return [max(concurrency)] if row.name == "ping" else concurrency


def measure(rows: list[Row], concurrency: Sequence[int], seconds: int) -> list[dict[str, Any]]:
    requests = http_requests(benchmark_inputs())
    results: list[dict[str, Any]] = []
    answers: dict[str, int | None] = {}
    with tempfile.TemporaryDirectory(prefix="mas-serving-bench-") as scratch:
        workdir = Path(scratch)
        weights = save_bare_weights(benchmark_model(), workdir / "bare-weights.pt")
        for target in TARGETS:
            target_rows = [row for row in rows if row.target == target]
            if not target_rows:
                continue
            started = time.monotonic()
            with server(target, workdir, weights) as base_url:
                print(f"{target}: ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
                for row in target_rows:
                    request = requests[row.request]
                    answers[row.name] = check_and_warm_up(base_url, row.request, request)
                    for connections in windows(row, concurrency):
                        result = run_wrk(base_url, request, connections, seconds)
                        figures = {**asdict(result), "req_per_s": result.requests_per_second}
                        results.append(_entry(row, connections, request, figures))
                        print(_progress(results[-1]), file=sys.stderr, flush=True)
                    if row.name in PACED_ROWS:
                        results.append(_paced(row, base_url, request, results, seconds))
                        print(_progress(results[-1]), file=sys.stderr, flush=True)
    _check_same_answers(answers)
    _add_ratios(results)
    return results


def _paced(
    row: Row,
    base_url: str,
    request: HttpRequest,
    results: list[dict[str, Any]],
    seconds: int,
) -> dict[str, Any]:
    """One window at about PACED_FRACTION of the row's highest req/s: PACED_CONNECTIONS
    connections, each pausing so that together they send that rate (wrk pauses in whole ms).
    A short window first measures what a pause yields, and the pause is corrected by it."""
    highest = max(r["req_per_s"] for r in results if r["row"] == row.name)
    cycle_ms = 1000.0 * PACED_CONNECTIONS / (PACED_FRACTION * highest)
    pause_ms = max(1, round(cycle_ms))
    trial = run_wrk(base_url, request, PACED_CONNECTIONS, 2, pause_ms)
    answer_ms = 1000.0 * PACED_CONNECTIONS / trial.requests_per_second - pause_ms
    pause_ms = max(1, round(cycle_ms - max(answer_ms, 0.0)))
    result = run_wrk(base_url, request, PACED_CONNECTIONS, seconds, pause_ms)
    figures = {**asdict(result), "req_per_s": result.requests_per_second}
    entry = _entry(row, PACED_CONNECTIONS, request, figures)
    return {
        **entry,
        "row": f"{row.name}@half",
        "pause_ms": pause_ms,
        "paced_of_req_per_s": highest,
        "baseline": row.name,
    }


def _entry(
    row: Row, connections: int, request: HttpRequest, figures: dict[str, Any]
) -> dict[str, Any]:
    return {
        "row": row.name,
        "about": row.about,
        "target": row.target,
        "settings": TARGETS[row.target],
        "method": request.method,
        "path": request.path,
        "body_bytes": len(request.body or b""),
        "concurrency": connections,
        "threads": min(connections, 2),
        **figures,
        "rows_per_s": figures["req_per_s"] if row.name != "ping" else 0.0,
        "baseline": row.baseline,
    }


def _check_same_answers(answers: dict[str, int | None]) -> None:
    classes = {name: answer for name, answer in answers.items() if answer is not None}
    if len(set(classes.values())) > 1:
        raise RuntimeError(f"the servers disagree on the benchmark row's class: {classes}")


def _add_ratios(results: list[dict[str, Any]]) -> None:
    by_key = {(r["row"], r["concurrency"]): r["req_per_s"] for r in results}
    for result in results:
        if "paced_of_req_per_s" in result:  # the share of its row's highest rate it ran at
            result["ratio"] = result["req_per_s"] / result["paced_of_req_per_s"]
        else:
            baseline = by_key[(result["baseline"], result["concurrency"])]
            result["ratio"] = result["req_per_s"] / baseline


def _progress(result: dict[str, Any]) -> str:
    return f"{result['row']} c{result['concurrency']}: {result['req_per_s']:.0f} req/s"


def format_table(results: list[dict[str, Any]]) -> str:
    header = (
        f"{'row':<20} {'c':>3} {'req/s':>8} {'rows/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'ratio':>6}  {'vs':<10} errors"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        errors = sum(r["errors"].values())
        lines.append(
            f"{r['row']:<20} {r['concurrency']:>3} {r['req_per_s']:>8.0f} {r['rows_per_s']:>8.0f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['ratio']:>5.2f}×  {r['baseline']:<10} "
            f"{errors}"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    wrk_version = subprocess.run(
        [wrk_executable() or "wrk", "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "wrk": wrk_version[0] if wrk_version else None,
        "load_average_start": list(os.getloadavg()),
    }


def _concurrency(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"connections must be at least 1, got {text!r}")
    return values


def _rows(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ROW_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"rows are among {','.join(ROW_NAMES)}, got {text!r}")
    return names


def _positive_seconds(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of seconds ≥ 1, got {text!r}")
    return int(text)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SECONDS} s windows at concurrency "
        f"{','.join(map(str, QUICK_CONCURRENCY))} (about 1.5 minutes on 2 cores)",
    )
    parser.add_argument(
        "--duration",
        type=_positive_seconds,
        metavar="S",
        help=f"seconds per wrk window (default {FULL_SECONDS}, {QUICK_SECONDS} with --quick)",
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        metavar="LIST",
        help="open connections per window, comma-separated (default "
        f"{','.join(map(str, FULL_CONCURRENCY))}; /ping runs at the highest only)",
    )
    parser.add_argument(
        "--rows",
        type=_rows,
        metavar="LIST",
        help=f"only these rows (and the baselines of their ratios): {','.join(ROW_NAMES)}",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")


def _stop_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, through the blocks that stop every server started."""
    raise SystemExit(143)


def run(args: argparse.Namespace) -> int:
    if wrk_executable() is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    seconds = args.duration or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    concurrency = args.concurrency or (QUICK_CONCURRENCY if args.quick else FULL_CONCURRENCY)
    report: dict[str, Any] = {
        "argv": sys.argv,
        "machine": machine(),
        "window_seconds": seconds,
        "concurrency": list(concurrency),
    }
    try:
        report["results"] = measure(selected_rows(args.rows or ROW_NAMES), concurrency, seconds)
    except KeyboardInterrupt:
        print("interrupted; every server it started is stopped", file=sys.stderr)
        return 130
    report["machine"]["load_average_end"] = list(os.getloadavg())
    print(format_table(report["results"]))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mas_stream.bench.serving", description=__doc__)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
