"""`mas-stream demo`: the permuted-MNIST scenario against a running service, or a fresh one."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mas_stream.bench.suites import NUM_TASKS
from mas_stream.client import (
    ServiceClient,
    ServiceError,
    ServiceUnreachable,
    add_client_options,
    is_live,
)
from mas_stream.scenario import SERVICE_ENV, ScenarioFailed, run_scenario
from mas_stream.startup import free_port


@dataclass(frozen=True)
class RunningService:
    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path


def local_env(
    data_dir: Path, port: int, env_overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """This environment for a service of its own: state in `data_dir`, the API on loopback at
    `port`, its own embedded Redis (any Redis URL in the environment dropped) and no worker
    metrics ports to collide with another service's."""
    env = {
        **os.environ,
        "MAS_DATA_DIR": str(data_dir),
        "MAS_HOST": "127.0.0.1",
        "MAS_PORT": str(port),
        "MAS_IMPORTANCE_METRICS_PORT": "0",
        "MAS_TRAINER_METRICS_PORT": "0",
        **(env_overrides or {}),
    }
    for variable in ("REDIS_URL", "MAS_REDIS_URL"):
        env.pop(variable, None)
    return env


@contextmanager
def serve(data_dir: Path, env_overrides: dict[str, str] | None = None) -> Iterator[RunningService]:
    """`mas-stream serve` with its state in `data_dir`, on a free loopback port."""
    port = free_port()
    env = local_env(data_dir, port, env_overrides)
    process = subprocess.Popen([sys.executable, "-m", "mas_stream", "serve"], env=env)
    try:
        yield RunningService(f"http://127.0.0.1:{port}", process, data_dir)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def fresh_service(env_overrides: dict[str, str] | None = None) -> Iterator[RunningService]:
    """`mas-stream serve` in a temporary data directory."""
    with (
        tempfile.TemporaryDirectory(prefix="mas-demo-") as data_dir,
        serve(Path(data_dir), env_overrides) as service,
    ):
        yield service


def configure(parser: argparse.ArgumentParser) -> None:
    add_client_options(parser, "Service to use; a fresh one is started if it is not reachable.")
    parser.add_argument(
        "--tasks",
        type=_task_count,
        default=4,
        help=f"Permuted-MNIST tasks to learn one after the other, 1 to {NUM_TASKS} (default: 4).",
    )


def _task_count(text: str) -> int:
    """argparse shows an ArgumentTypeError's message as one line naming the option."""
    count = int(text)
    if not 1 <= count <= NUM_TASKS:
        raise argparse.ArgumentTypeError(f"must be 1 to {NUM_TASKS}, got {count}")
    return count


class FreshServiceExited(RuntimeError):
    """The service the demo started stopped before it answered (it said why, above)."""


def _wait_for(service: RunningService, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not is_live(service.url):
        code = service.process.poll()
        if code is not None:
            raise FreshServiceExited(
                f"the service it started exited with code {code} before answering (why is above)"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service it started at {service.url} not live after {timeout}s")
        time.sleep(0.2)


def _run(url: str, args: argparse.Namespace) -> int:
    with ServiceClient(url, token=args.token) as client:
        report = run_scenario(client, tasks=args.tasks, epochs=args.epochs, lam=args.lam)
        first = report.stages[0].task
        print(
            f"\n{first}: accuracy right after learning it {report.stages[0].accuracy[first]:.3f},"
            f" after {len(report.stages)} tasks {report.stages[-1].accuracy[first]:.3f} "
            f"(drop {100 * report.drop(first):.1f} points)"
        )
        print(f"rows served per version: {dict(report.rows_served)}")
        print("versions:")
        for version in client.models().versions:
            print(
                f"  v{version.version} parent={version.parent} "
                f"tasks={list(version.tasks)} current={version.current}"
            )
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if is_live(args.url):
            return _run(args.url, args)
        print(f"{args.url} is not reachable: starting a fresh service for the demo")
        with fresh_service(SERVICE_ENV) as service:
            _wait_for(service)
            return _run(service.url, args)
    except ServiceError as error:
        # The service's refusal (e.g. a task of another input shape already there) is the news.
        print(f"the service refused the demo: {error}", file=sys.stderr)
        return 1
    except (ScenarioFailed, TimeoutError, ServiceUnreachable, FreshServiceExited) as error:
        print(f"the demo failed: {error}", file=sys.stderr)
        return 1
