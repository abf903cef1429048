"""Whether Redis stays small while the service serves at its highest rate with forwarding on.

`python -m mas_stream.bench.redis_memory [--quick] [--duration S] [--json OUT]` (also
`mas-stream bench-redis-memory`): `mas-stream serve` (forwarding rate 1.0, its importance worker
trimming what it acknowledged) under one closed-loop `wrk` window of 784-float `/v1/predict`
rows; every few seconds it reads Redis's used_memory, the sample stream's length, lag and
`MEMORY USAGE`, and the append-only file's size. Memory is flat when the growth after the first
quarter of the run (warm-up) stays near zero while millions of bytes of rows pass through.
Beside the load, a probe sends one single-row request every quarter second and notes whether an
AOF rewrite was running: a rewrite that stalls serving shows as a p99 during rewrites far above
the p99 outside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from itertools import pairwise
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np

from mas_stream.bench.report import command_main, finish, wrk_missing
from mas_stream.bench.serving import _positive_seconds, check_and_warm_up, machine
from mas_stream.bench.serving_requests import WIDTH, benchmark_inputs, http_requests
from mas_stream.bench.serving_servers import running_service
from mas_stream.bench.wrk import HttpRequest, run_wrk
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient, redis_client
from mas_stream.store.traffic import SampleStream

FULL_SECONDS: Final = 60
QUICK_SECONDS: Final = 10
# The service's highest rate on the 2-core box: throughput is flat from 16 connections on.
CONCURRENCY: Final = 16
_MIB: Final = 2**20
_PROBE_INTERVAL_S: Final = 0.25


def _forwarded_rows(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=5.0).text
    line = next(x for x in text.splitlines() if x.startswith("mas_samples_forwarded_total"))
    return float(line.split()[-1])


def _sample(client: RedisClient, stream: SampleStream, started: float) -> dict[str, Any]:
    stats, memory = stream.stats(), stream.memory()
    persistence = client.info("persistence")
    return {
        "t_s": round(time.monotonic() - started, 1),
        "redis_used_bytes": memory.redis_bytes,
        "stream_bytes": memory.stream_bytes,
        "stream_entries": stats.length,
        "lag_entries": stats.lag,
        "aof_bytes": int(persistence.get("aof_current_size", 0)),
        "aof_rewrite_in_progress": int(persistence.get("aof_rewrite_in_progress", 0)),
    }


def _probe(
    base_url: str, client: RedisClient, request: HttpRequest, stop: threading.Event
) -> list[tuple[bool, float]]:
    """(AOF rewrite running, latency in ms) of one single-row predict per probe interval."""
    probes: list[tuple[bool, float]] = []
    with httpx.Client(base_url=base_url, timeout=30.0) as http:
        while not stop.wait(_PROBE_INTERVAL_S):
            rewriting = bool(int(client.info("persistence").get("aof_rewrite_in_progress", 0)))
            started = time.perf_counter()
            answer = http.post(request.path, content=request.body, headers=request.headers)
            answer.raise_for_status()
            probes.append((rewriting, (time.perf_counter() - started) * 1000))
    return probes


def probe_summary(probes: list[tuple[bool, float]]) -> dict[str, Any]:
    """Single-row latency during AOF rewrites beside outside them (None: no probe there)."""

    def percentile(values: list[float], q: float) -> float | None:
        return float(np.percentile(values, q)) if values else None

    during = [ms for rewriting, ms in probes if rewriting]
    outside = [ms for rewriting, ms in probes if not rewriting]
    return {
        "probes_during_rewrite": len(during),
        "probes_outside_rewrite": len(outside),
        "probe_p50_ms_during_rewrite": percentile(during, 50),
        "probe_p99_ms_during_rewrite": percentile(during, 99),
        "probe_p50_ms_outside_rewrite": percentile(outside, 50),
        "probe_p99_ms_outside_rewrite": percentile(outside, 99),
    }


def measure(seconds: int, connections: int, interval: float) -> dict[str, Any]:
    request = http_requests(benchmark_inputs())["v1-json"]
    with tempfile.TemporaryDirectory(prefix="mas-redis-memory-bench-") as scratch:
        data_dir = Path(scratch) / "service"
        with running_service(data_dir, {"MAS_SAMPLE_RATE": "1.0"}) as base_url:
            check_and_warm_up(base_url, "v1-json", request)
            client = redis_client(f"unix://{data_dir / 'redis' / 'redis.sock'}")
            stream = SampleStream(client, Keys(), maxlen=0)
            forwarded_before = _forwarded_rows(base_url)
            started = time.monotonic()
            samples = [_sample(client, stream, started)]
            stop_probing = threading.Event()
            probe_client = redis_client(f"unix://{data_dir / 'redis' / 'redis.sock'}")
            with ThreadPoolExecutor(max_workers=2) as pool:
                window = pool.submit(run_wrk, base_url, request, connections, seconds)
                probing = pool.submit(_probe, base_url, probe_client, request, stop_probing)
                while not window.done():
                    time.sleep(interval)
                    samples.append(_sample(client, stream, started))
                    print(_progress(samples[-1]), file=sys.stderr, flush=True)
                result = window.result()
                stop_probing.set()
                probes = probing.result()
            probe_client.close()
            forwarded = _forwarded_rows(base_url) - forwarded_before
            client.close()
    return {
        "wrk": {**asdict(result), "req_per_s": result.requests_per_second},
        "forwarded_rows": forwarded,
        "samples": samples,
        "summary": summarize(samples, forwarded),
        "latency_probe": probe_summary(probes),
    }


def summarize(samples: list[dict[str, Any]], forwarded: float) -> dict[str, Any]:
    """Growth after warm-up (the first quarter of the run) and its least-squares slope."""
    settled = [s for s in samples if s["t_s"] >= samples[-1]["t_s"] / 4] or samples
    used = np.array([s["redis_used_bytes"] for s in settled], dtype=float)
    times = np.array([s["t_s"] for s in settled], dtype=float)
    slope = float(np.polyfit(times, used, 1)[0]) if len(settled) > 1 and np.ptp(times) else 0.0
    rewrites = sum(
        1
        for before, after in pairwise(samples)
        if after["aof_rewrite_in_progress"] and not before["aof_rewrite_in_progress"]
    )
    return {
        "rows_forwarded_mib": forwarded * WIDTH * 4 / _MIB,
        "redis_used_mib_start": samples[0]["redis_used_bytes"] / _MIB,
        "redis_used_mib_after_warm_up": used[0] / _MIB,
        "redis_used_mib_peak": max(s["redis_used_bytes"] for s in samples) / _MIB,
        "redis_used_mib_end": samples[-1]["redis_used_bytes"] / _MIB,
        "growth_after_warm_up_mib": (used.max() - used[0]) / _MIB,
        "slope_mib_per_min": slope * 60 / _MIB,
        "stream_entries_peak": max(s["stream_entries"] for s in samples),
        "stream_mib_peak": max(s["stream_bytes"] for s in samples) / _MIB,
        "aof_mib_end": samples[-1]["aof_bytes"] / _MIB,
        "aof_rewrites_seen": rewrites,
    }


def _progress(sample: dict[str, Any]) -> str:
    return (
        f"t={sample['t_s']:.0f}s used {sample['redis_used_bytes'] / _MIB:.1f} MiB, stream "
        f"{sample['stream_entries']} entries {sample['stream_bytes'] / _MIB:.2f} MiB, "
        f"lag {sample['lag_entries']}"
    )


def format_report(report: dict[str, Any]) -> str:
    wrk, summary = report["wrk"], report["summary"]
    lines = [
        f"/v1/predict at c{report['concurrency']} for {report['duration_s']} s: "
        f"{wrk['req_per_s']:.0f} req/s, p99 {wrk['p99_ms']:.1f} ms, errors "
        f"{sum(wrk['errors'].values())}; {report['forwarded_rows']:.0f} rows forwarded",
        f"{'figure':<32} value",
        "-" * 44,
    ]
    lines += [f"{name:<32} {value:.2f}" for name, value in summary.items()]
    lines += [
        f"{name:<32} {'-' if value is None else f'{value:.2f}'}"
        for name, value in report["latency_probe"].items()
    ]
    return "\n".join(lines)


def _connections(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"connections must be at least 1, got {text!r}")
    return int(text)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help=f"a {QUICK_SECONDS} s run (default {FULL_SECONDS} s)"
    )
    parser.add_argument(
        "--duration",
        type=_positive_seconds,
        metavar="S",
        help="seconds of load (the issue's long run: --duration 600)",
    )
    parser.add_argument(
        "--concurrency",
        type=_connections,
        default=CONCURRENCY,
        metavar="N",
        help=f"open connections (default {CONCURRENCY})",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")


def run(args: argparse.Namespace) -> int:
    if wrk_missing():
        return 1
    seconds = args.duration or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    report: dict[str, Any] = {
        "argv": sys.argv,
        "machine": machine(),
        "duration_s": seconds,
        "concurrency": args.concurrency,
    }
    report.update(measure(seconds, args.concurrency, interval=max(1.0, seconds / 30)))
    report["machine"]["load_average_end"] = list(os.getloadavg())
    return finish(report, format_report, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("python -m mas_stream.bench.redis_memory", __doc__, configure, run, argv)


if __name__ == "__main__":
    sys.exit(main())
