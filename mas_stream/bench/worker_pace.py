"""Whether the importance worker keeps up with the service: its pace next to the serving rate.

`mas-stream bench-worker-pace [--quick] [--json OUT]` (also `python -m
mas_stream.bench.worker_pace`), on the default MLP (784-256-256) and the built-in CNN
([1, 28, 28], 3×3 convs of 16 and 32 channels, hidden 32), exact Ω:

one `mas-stream serve` each (forwarding rate 1.0, embedded Redis, both workers):

1. drain: with the API idle, the service's importance worker alone, then with 1 and 3 more
   `mas-stream worker importance` processes (1, 2 and 4 workers): rows of one-row entries (what
   the forwarder writes at one row per request) are appended to the stream, and the clock runs
   until Ω's sample count has grown by all of them: rows/s from stream entry to checkpointed Ω.
2. serve: the service's own worker while one closed-loop `wrk` window drives one-row
   `/v1/predict` at concurrency 16, its highest rate here; every second the stream's lag, Ω's
   count and the rows forwarded, then the time the worker takes to catch up after the window.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import numpy as np

import mas
from mas_stream.bench.redis_memory import _forwarded_rows
from mas_stream.bench.report import command_main, finish, wrk_missing
from mas_stream.bench.serving import _positive_seconds, check_and_warm_up, machine
from mas_stream.bench.serving_requests import benchmark_inputs, http_requests
from mas_stream.bench.serving_servers import (
    CLASSES,
    HOST,
    SPEC,
    TASK,
    _child,
    _wait_until_ready,
    free_port,
    running_service,
    service_environment,
)
from mas_stream.bench.wrk import run_wrk
from mas_stream.records.sample import Sample
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient, redis_client
from mas_stream.store.traffic import OmegaStore, SampleStream

MODELS: Final[dict[str, dict[str, Any]]] = {
    "mlp": SPEC,
    "cnn": {"family": "cnn", "input_shape": [1, 28, 28], "channels": [16, 32], "hidden": [32]},
}
WORKERS: Final = (1, 2, 4)
CONCURRENCY: Final = 16
# (drain rows per model, serve seconds) in a full run and a quick one.
FULL: Final = ({"mlp": 20_000, "cnn": 4_000}, 10)
QUICK: Final = ({"mlp": 3_000, "cnn": 600}, 3)
_APPEND_CHUNK: Final = 500
_DRAIN_TIMEOUT_S: Final = 120.0
_CATCH_UP_TIMEOUT_S: Final = 60.0
_STREAM_MAXLEN: Final = int(Settings.model_fields["stream_maxlen"].default)
# After a worker answers /metrics, the moment it takes to block on the stream.
_SETTLE_S: Final = 0.5
# The one version `running_service` publishes, into a fresh data directory.
SERVED_VERSION: Final = 1


def _model(name: str) -> mas.MultiHeadNet:
    return mas.build_model(MODELS[name], {TASK: CLASSES}, seed=0)


def _omega_total(client: RedisClient) -> int:
    return OmegaStore(client, Keys()).counts(SERVED_VERSION).total


@contextmanager
def _extra_workers(count: int, data_dir: Path) -> Iterator[None]:
    """`count` more importance workers on the service's Redis, started as the supervisor starts
    its own; yields once every one answers /metrics (it reads the stream next)."""
    redis_url = f"unix://{data_dir / 'redis' / 'redis.sock'}"
    with ExitStack() as stack:
        started = []
        for index in range(1, count + 1):
            port = free_port()
            ports = {"api": 0, "importance": port, "trainer": 0}
            env = service_environment(data_dir, ports, {"REDIS_URL": redis_url})
            command = [sys.executable, "-m", "mas_stream", "worker", "importance"]
            command += ["--worker-id", f"importance-{index}"]
            log_path = data_dir / f"worker-{count}-{index}.log"
            started.append((port, stack.enter_context(_child(command, env, log_path)), log_path))
        for port, process, log_path in started:
            _wait_until_ready(f"http://{HOST}:{port}/metrics", process, log_path)
        time.sleep(_SETTLE_S)
        yield


def _append(client: RedisClient, input_shape: list[int], rows: int) -> None:
    """The benchmark's row, shaped as the API forwards it (validated to the model's shape)."""
    stream = SampleStream(client, Keys(), _STREAM_MAXLEN)
    values = benchmark_inputs().reshape(1, *input_shape)
    for start in range(0, rows, _APPEND_CHUNK):
        count = min(_APPEND_CHUNK, rows - start)
        stream.append_many([Sample(SERVED_VERSION, TASK, values) for _ in range(count)])


def _drain(client: RedisClient, data_dir: Path, model: str, workers: int, rows: int) -> float:
    """Seconds from the first entry appended to the last of them counted in checkpointed Ω, with
    the service's own worker and `workers - 1` more."""
    before = _omega_total(client)
    with _extra_workers(workers - 1, data_dir):
        started = time.monotonic()
        _append(client, MODELS[model]["input_shape"], rows)
        while _omega_total(client) - before < rows:
            if time.monotonic() - started > _DRAIN_TIMEOUT_S:
                raise TimeoutError(f"{workers} workers did not count {rows} rows in time")
            time.sleep(0.05)
        return time.monotonic() - started


def _sample(base_url: str, client: RedisClient, started: float) -> dict[str, Any]:
    stats = SampleStream(client, Keys(), _STREAM_MAXLEN).stats()
    return {
        "t_s": round(time.monotonic() - started, 2),
        "lag_entries": stats.lag,
        "omega_rows": _omega_total(client),
        "forwarded_rows": _forwarded_rows(base_url),
    }


def _serve_at_max_rate(base_url: str, client: RedisClient, seconds: int) -> dict[str, Any]:
    """One wrk window, the worker's lag every second, then its catch-up."""
    request = http_requests(benchmark_inputs())["v1-json"]
    started = time.monotonic()
    samples = [_sample(base_url, client, started)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        window = pool.submit(run_wrk, base_url, request, CONCURRENCY, seconds)
        while not window.done():
            time.sleep(1.0)
            if not window.done():
                samples.append(_sample(base_url, client, started))
        result = window.result()
    load_end = len(samples) - 1  # the last sample taken while the window ran
    samples.append(_sample(base_url, client, started))
    while samples[-1]["lag_entries"] and samples[-1]["t_s"] < seconds + _CATCH_UP_TIMEOUT_S:
        time.sleep(0.5)
        samples.append(_sample(base_url, client, started))
    return {
        "wrk": {**asdict(result), "req_per_s": result.requests_per_second},
        "samples": samples,
        "summary": summarize(samples, load_end, result.requests_per_second),
    }


def measure(
    name: str, rows: int, workers: Sequence[int], seconds: int, scratch: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One service on model `name`: the drain runs, then the serving window."""
    data_dir = scratch / name
    request = http_requests(benchmark_inputs())["v1-json"]
    with running_service(data_dir, {"MAS_SAMPLE_RATE": "1.0"}, _model(name)) as base_url:
        check_and_warm_up(base_url, "v1-json", request)
        client = redis_client(f"unix://{data_dir / 'redis' / 'redis.sock'}")
        while _omega_total(client) < _forwarded_rows(base_url):  # the warm-up's rows
            time.sleep(0.1)
        drains = []
        for count in workers:
            elapsed = _drain(client, data_dir, name, count, rows)
            drains.append({"model": name, "workers": count, "rows": rows, "seconds": elapsed,
                           "rows_per_s": rows / elapsed})  # fmt: skip
            print(f"drain {name}, {count} workers: {rows / elapsed:.0f} rows/s", file=sys.stderr)
        serving = {"model": name, **_serve_at_max_rate(base_url, client, seconds)}
        client.close()
    return drains, serving


def summarize(samples: list[dict[str, Any]], load_end: int, req_per_s: float) -> dict[str, Any]:
    """Rates over the load window; the lag's least-squares slope; the catch-up after it."""
    first, last = samples[0], samples[load_end]
    span = max(last["t_s"] - first["t_s"], 1e-9)
    lags = [s["lag_entries"] or 0 for s in samples[: load_end + 1]]
    times = [s["t_s"] for s in samples[: load_end + 1]]
    slope = float(np.polyfit(times, lags, 1)[0]) if len(lags) > 1 else 0.0
    caught_up = samples[-1]["lag_entries"] == 0
    return {
        "predict_req_per_s": req_per_s,
        "forwarded_rows_per_s": (last["forwarded_rows"] - first["forwarded_rows"]) / span,
        "omega_rows_per_s": (last["omega_rows"] - first["omega_rows"]) / span,
        "lag_peak_entries": max(s["lag_entries"] or 0 for s in samples),
        "lag_end_of_load_entries": lags[-1],
        "lag_slope_entries_per_s": slope,
        "catch_up_s": samples[-1]["t_s"] - last["t_s"] if caught_up else None,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'drain':<6} {'workers':>7} {'rows':>7} {'rows/s':>9}", "-" * 32]
    for row in report["drain"]:
        lines.append(
            f"{row['model']:<6} {row['workers']:>7} {row['rows']:>7} {row['rows_per_s']:>9.0f}"
        )
    lines.append("")
    for serving in report["serving"]:
        lines.append(f"serve {serving['model']}: /v1/predict at c{CONCURRENCY}, one row each")
        lines += [f"  {name:<28} {value}" for name, value in _shown(serving["summary"]).items()]
        lines.append(f"  {'lag over time (t s: entries)':<28} " + ", ".join(
            f"{s['t_s']:.0f}: {s['lag_entries']}" for s in serving["samples"]
        ))  # fmt: skip
    lines.append("")
    for name, ratio in report["ratios"].items():
        lines.append(f"{name:<44} {ratio:.2f}×")
    return "\n".join(lines)


def _shown(summary: dict[str, Any]) -> dict[str, str]:
    return {
        name: "n/a" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)
        for name, value in summary.items()
    }


def ratios(report: dict[str, Any]) -> dict[str, float]:
    """One worker's drain rate, alone and beside serving, over the highest predict rate."""
    out = {}
    for serving in report["serving"]:
        name, summary = serving["model"], serving["summary"]
        alone = next(r for r in report["drain"] if r["model"] == name and r["workers"] == 1)
        out[f"{name}: 1-worker drain / max predict rows/s"] = (
            alone["rows_per_s"] / summary["predict_req_per_s"]
        )
        out[f"{name}: Ω rows/s / forwarded rows/s under load"] = summary["omega_rows_per_s"] / max(
            summary["forwarded_rows_per_s"], 1e-9
        )
    return out


def _workers(text: str) -> tuple[int, ...]:
    counts = tuple(int(part) for part in text.split(",") if part.strip().isdigit())
    if len(counts) != len(text.split(",")) or min(counts, default=0) < 1:
        raise argparse.ArgumentTypeError(f"worker counts are whole numbers ≥ 1, got {text!r}")
    return counts


def _models(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names or any(name not in MODELS for name in names):
        raise argparse.ArgumentTypeError(f"models are among {','.join(MODELS)}, got {text!r}")
    return names


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer rows, a 3 s serving window")
    parser.add_argument(
        "--models",
        type=_models,
        default=tuple(MODELS),
        metavar="LIST",
        help=f"comma-separated, among {','.join(MODELS)} (default: both)",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=WORKERS,
        metavar="LIST",
        help="importance workers of each drain run, comma-separated (default 1,2,4)",
    )
    parser.add_argument("--duration", type=_positive_seconds, metavar="S", help="serving window")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")


def run(args: argparse.Namespace) -> int:
    if wrk_missing():
        return 1
    rows, seconds = QUICK if args.quick else FULL
    seconds = args.duration or seconds
    models, workers = args.models, args.workers
    report: dict[str, Any] = {"argv": sys.argv, "machine": machine(), "method": "exact"}
    report["drain"], report["serving"] = [], []
    with tempfile.TemporaryDirectory(prefix="mas-worker-pace-") as scratch:
        for name in models:
            drains, serving = measure(name, rows[name], workers, seconds, Path(scratch))
            report["drain"] += drains
            report["serving"].append(serving)
    report["ratios"] = ratios(report)
    return finish(report, format_report, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("mas-stream bench-worker-pace", __doc__, configure, run, argv)


if __name__ == "__main__":
    sys.exit(main())
