"""The importance worker when things go wrong: a restart, a backlog also reclaimed, an entry
delivered too often, a pass slower than the reclaim time, and real SIGKILLs of worker processes.
Whatever happens, every sample is counted in Ω exactly once.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch

import mas
from mas_stream.records.sample import Sample
from mas_stream.store.keys import Keys
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import OmegaStore, SampleStream
from tests.support.importance import (
    assert_omega_matches,
    drain,
    drained,
    make_traffic,
    make_worker,
    pending_of,
    worker_metric,
    worker_settings,
)
from tests.support.paths import ROOT
from tests.support.processes import worker_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_restarted_worker_continues_its_partial(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    traffic = make_traffic(digits, [(2, "a")], entries=40, seed=1)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    settings = worker_settings(tmp_path, keys)
    stream.append_many(traffic[:20])
    drain(make_worker(settings, redis_conn, keys, registry, "w1"), stream)
    stream.append_many(traffic[20:])
    drain(make_worker(settings, redis_conn, keys, registry, "w1"), stream)
    assert redis_conn.hkeys(keys.omega_partials(2)) == [b"w1"]
    assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (2,))


def test_a_backlog_that_is_also_reclaimed_is_counted_once(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    traffic = make_traffic(digits, [(2, "a"), (2, "b")], entries=10, seed=5)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.ensure_group()
    stream.append_many(traffic)
    stream.read("w1-consumer", count=10, block_ms=None)  # then the process died
    settings = worker_settings(tmp_path, keys, claim_min_idle_ms=0)

    drain(make_worker(settings, redis_conn, keys, registry, "w1"), stream)

    assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (2,))


def test_an_entry_delivered_too_often_is_dead_lettered_before_it_is_tried(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.ensure_group()
    stream.append_many([Sample(1, "a", digits[:2])])
    assert len(stream.read("crashed", count=10, block_ms=None)) == 1
    for crashed in ("c1", "c2"):  # consumers that took it over and died without a trace
        assert len(stream.claim_stale(crashed, min_idle_ms=0, count=10)) == 1
    settings = worker_settings(tmp_path, keys, dead_letter_after=2, claim_min_idle_ms=0)

    drain(make_worker(settings, redis_conn, keys, registry, "w1"), stream)

    ((_, fields),) = redis_conn.xrange(keys.samples_dead)
    assert re.fullmatch(rb"retries_exhausted: delivered [45] times", fields[b"reason"])
    assert OmegaStore(redis_conn, keys).versions() == []


def test_a_pass_slower_than_the_reclaim_time_is_not_taken_over_by_another_worker(
    redis_conn: redis.Redis,
    keys: Keys,
    registry: ModelRegistry,
    digits: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real importance pass, made slower than claim_min_idle_ms (a big read, a slow device)."""

    def slow_importance_sums(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        time.sleep(0.5)
        return mas.importance_sums(*args, **kwargs)

    monkeypatch.setattr("worker.importance.importance_sums", slow_importance_sums)
    traffic = make_traffic(digits, [(2, "a")], entries=8, seed=7)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.append_many(traffic)
    settings = worker_settings(tmp_path, keys, claim_min_idle_ms=200, dead_letter_after=2)
    workers = [make_worker(settings, redis_conn, keys, registry, name) for name in ("w1", "w2")]
    conflicts = worker_metric("mas_importance_commit_conflicts_total")
    stop = threading.Event()
    threads = [threading.Thread(target=w.run_forever, args=(stop,)) for w in workers]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: drained(stream), 30, interval=0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert redis_conn.xlen(keys.samples_dead) == 0
    assert worker_metric("mas_importance_commit_conflicts_total") == conflicts
    assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (2,))


@pytest.fixture
def spawn(
    redis_url: str, keys: Keys, tmp_path: Path
) -> Iterator[Callable[[str], subprocess.Popen]]:
    """Starts `python -m worker.importance` as worker w1 with the given consumer name."""
    env = worker_env(
        redis_url,
        keys,
        tmp_path,
        device="cpu",
        checkpoint_every="2",
        claim_min_idle_ms="300",
        dead_letter_after="1000",
        importance_metrics_port="0",
    )
    processes: list[subprocess.Popen] = []

    def start(consumer: str) -> subprocess.Popen:
        log = (tmp_path / f"{consumer}.log").open("wb")
        command = [sys.executable, "-m", "mas_stream", "worker", "importance", "--worker-id", "w1"]
        process = subprocess.Popen(
            [*command, "--consumer", consumer], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigkilled_workers_still_count_every_sample_exactly_once(
    redis_conn: redis.Redis,
    keys: Keys,
    registry: ModelRegistry,
    digits: np.ndarray,
    spawn: Callable[[str], subprocess.Popen],
) -> None:
    traffic = make_traffic(digits, [(1, "a"), (2, "a"), (2, "b")], entries=1200, seed=4)
    assert sum(len(sample.rows) for sample in traffic) > 4000
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    omega = OmegaStore(redis_conn, keys)

    def committed() -> int:
        return omega.counts(1).total + omega.counts(2).total

    rows = sum(len(sample.rows) for sample in traffic)
    stream.append_many(traffic)
    process = spawn("c0")
    in_flight = 0
    for index, (fraction, delay) in enumerate([(0.1, 0.0), (0.4, 0.003), (0.7, 0.01)]):
        wait_until(lambda f=fraction: committed() > f * rows, 30, interval=0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        in_flight += pending_of(redis_conn, keys, f"c{index}")
        process = spawn(f"c{index + 1}")
    wait_until(lambda: committed() == rows and drained(stream), 30, interval=0.005)
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0

    assert in_flight > 0, "no kill caught the worker with delivered, uncommitted entries"
    assert all(pending_of(redis_conn, keys, f"c{index}") == 0 for index in range(3))
    assert redis_conn.xlen(keys.samples_dead) == 0
    assert redis_conn.hkeys(keys.omega_partials(2)) == [b"w1"]
    assert_omega_matches(omega, registry, traffic, (1, 2))
