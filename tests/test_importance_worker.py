"""The importance worker end to end: real Redis, real models, digits traffic, real SIGKILLs.

Reference Ω is `mas.importance_sums` over the same inputs at each version's parameters; the worker
must match it whatever happens to the worker: restarts, kills, a second worker in the group.
"""

from __future__ import annotations

import os
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
from sklearn.datasets import load_digits

import mas
from mas.drift import layer_summary
from mas_stream.records.omega import OmegaCounts
from mas_stream.records.sample import Sample
from mas_stream.records.version import VersionMetrics
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.omega import OmegaStore
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.samples import SampleStream
from tests.api_support import version_info, wait_until
from worker.importance import METRICS, ImportanceWorker


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matmuls gain nothing from two threads and lose a lot when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SPEC = {"family": "mlp", "input_shape": [64], "hidden": [32], "activation": "relu"}
ROOT = Path(__file__).resolve().parents[1]
Traffic = list[Sample]


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    x, _ = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32)


@pytest.fixture
def registry(redis_conn: redis.Redis, keys: Keys, tmp_path: Path) -> ModelRegistry:
    """v1 serves task a; v2 (other trunk parameters) serves a and b, with a boundary Ω."""
    registry = ModelRegistry(redis_conn, keys, tmp_path / "models")
    no_metrics = VersionMetrics(accuracy={})
    v1 = registry.publish(
        mas.build_model(SPEC, {"a": 5}), parent=None, metrics=no_metrics, info=version_info("a")
    )
    model = mas.build_model(SPEC, {"a": 5, "b": 5})
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.trunk.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    boundary = {
        name: torch.rand(p.shape, generator=generator) for name, p in model.named_parameters()
    }
    v2 = registry.publish(
        model,
        parent=v1,
        metrics=no_metrics,
        info=version_info("b"),
        extra_tensors={"omega_boundary": boundary},
    )
    registry.activate(v2)
    assert (v1, v2) == (1, 2)
    return registry


def _settings(tmp_path: Path, keys: Keys, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "key_prefix": keys.prefix,
        "checkpoint_every": 2,
        "claim_min_idle_ms": 60_000,
        "importance_batch": 64,
        "importance_metrics_port": 0,
        **overrides,
    }
    return Settings(**values)


def _traffic(digits: np.ndarray, plan: list[tuple[int, str]], entries: int, seed: int) -> Traffic:
    """Entries of 1 to 8 digit rows, cycling over the (version, task) plan."""
    rng = np.random.default_rng(seed)
    return [
        Sample(*plan[i % len(plan)], digits[rng.integers(0, len(digits), rng.integers(1, 9))])
        for i in range(entries)
    ]


def _expected(registry: ModelRegistry, traffic: Traffic, version: int) -> dict[str, torch.Tensor]:
    """In float64, so the comparison measures the worker's rounding, not the reference's."""
    model = registry.load(version).model.double()
    by_task: dict[str, list[np.ndarray]] = {}
    for sample in traffic:
        if sample.version == version:
            by_task.setdefault(sample.task, []).append(sample.rows)
    sums = [
        mas.importance_sums(model, torch.from_numpy(np.concatenate(rows)).double(), task=task)
        for task, rows in by_task.items()
    ]
    return {name: sum(s[name] for s in sums) for name in sums[0]}


def _assert_omega_matches(
    omega: OmegaStore, registry: ModelRegistry, traffic: Traffic, versions: tuple[int, ...]
) -> None:
    for version in versions:
        merged = omega.merged(version)
        expected = _expected(registry, traffic, version)
        assert merged is not None and merged.sums.keys() == expected.keys()
        for name, value in expected.items():
            error = (merged.sums[name] - value).abs().max()
            assert error <= 1e-6 * value.abs().max(), (version, name, float(error))
        tasks: dict[str, int] = {}
        for sample in traffic:
            if sample.version == version:
                tasks[sample.task] = tasks.get(sample.task, 0) + len(sample.rows)
        assert omega.counts(version) == OmegaCounts(total=sum(tasks.values()), tasks=tasks)
        assert merged.count == sum(tasks.values())


def _drained(stream: SampleStream) -> bool:
    stats = stream.stats()
    return stats.pending == 0 and stats.lag == 0


def _drain(worker: ImportanceWorker, stream: SampleStream) -> None:
    deadline = time.monotonic() + 30
    while not _drained(stream):
        assert time.monotonic() < deadline, "worker did not drain the stream"
        worker.run_once()


def _worker(
    settings: Settings,
    redis_conn: redis.Redis,
    keys: Keys,
    registry: ModelRegistry,
    name: str,
) -> ImportanceWorker:
    return ImportanceWorker(
        settings,
        redis_conn,
        keys,
        registry,
        worker_id=name,
        consumer=f"{name}-consumer",
        read_count=16,
        block_ms=20,
    )


def _pending_of(redis_conn: redis.Redis, keys: Keys, consumer: str) -> int:
    summary = redis_conn.xpending(keys.samples, keys.importance_group)
    return sum(c["pending"] for c in summary["consumers"] if c["name"] == consumer.encode())


def _metric(name: str, **labels: str) -> float:
    return METRICS.get_sample_value(name, labels) or 0.0


def test_worker_omega_equals_importance_sums_per_version_and_task(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    traffic = _traffic(digits, [(1, "a"), (2, "a"), (2, "b"), (2, "b")], entries=300, seed=0)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.append_many(traffic)
    applied_before = _metric("mas_importance_samples_applied_total")
    worker = _worker(_settings(tmp_path, keys), redis_conn, keys, registry, "w1")

    _drain(worker, stream)

    omega = OmegaStore(redis_conn, keys)
    assert omega.versions() == [1, 2]
    _assert_omega_matches(omega, registry, traffic, (1, 2))
    rows = sum(len(sample.rows) for sample in traffic)
    assert _metric("mas_importance_samples_applied_total") - applied_before == rows

    # Gauges refresh at most once a second: the next loop after that publishes the current one's.
    time.sleep(1.05)
    worker.run_once()
    assert _metric("mas_importance_stream_length") == len(traffic)
    assert _metric("mas_importance_stream_pending") == 0
    merged = omega.merged(2)
    assert merged is not None
    summary = layer_summary(merged.mean(), registry.extra_tensors(2, "omega_boundary"))
    assert set(summary) == {"trunk.1", "heads.a", "heads.b"}
    for layer, values in summary.items():
        for stat, value in values.items():
            assert _metric(f"mas_importance_layer_{stat}", layer=layer) == pytest.approx(value)


def test_a_restarted_worker_continues_its_partial(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    traffic = _traffic(digits, [(2, "a")], entries=40, seed=1)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    settings = _settings(tmp_path, keys)
    stream.append_many(traffic[:20])
    _drain(_worker(settings, redis_conn, keys, registry, "w1"), stream)
    stream.append_many(traffic[20:])
    _drain(_worker(settings, redis_conn, keys, registry, "w1"), stream)
    assert redis_conn.hkeys(keys.omega_partials(2)) == [b"w1"]
    _assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (2,))


def test_a_backlog_that_is_also_reclaimed_is_counted_once(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    traffic = _traffic(digits, [(2, "a"), (2, "b")], entries=10, seed=5)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.ensure_group()
    stream.append_many(traffic)
    stream.read("w1-consumer", count=10, block_ms=None)  # then the process died
    settings = _settings(tmp_path, keys, claim_min_idle_ms=0)

    _drain(_worker(settings, redis_conn, keys, registry, "w1"), stream)

    _assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (2,))


def test_corrupt_entries_and_unknown_versions_are_dead_lettered_not_counted(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    traffic = _traffic(digits, [(1, "a"), (2, "b")], entries=20, seed=2)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.append_many(traffic[:10])
    corrupt = redis_conn.xadd(keys.samples, {"v": 2, "t": "a", "s": "2,64", "x": b"\x00" * 12})
    unknown = stream.append_many([Sample(99, "a", digits[:3])])
    assert unknown == 3
    stream.append_many(traffic[10:])
    settings = _settings(tmp_path, keys, dead_letter_after=2, claim_min_idle_ms=0)
    before = {
        r: _metric("mas_importance_dead_lettered_total", reason=r) for r in ("corrupt", "failed")
    }

    _drain(_worker(settings, redis_conn, keys, registry, "w1"), stream)

    dead = {fields[b"entry"]: fields for _, fields in redis_conn.xrange(keys.samples_dead)}
    assert len(dead) == 2
    assert dead[corrupt][b"reason"].startswith(b"corrupt: 12 data bytes, shape [2, 64] needs 512")
    (unknown_fields,) = (f for f in dead.values() if f[b"v"] == b"99")
    assert unknown_fields[b"reason"] == b"failed: UnknownVersion: model version 99 does not exist"
    for reason in ("corrupt", "failed"):
        assert _metric("mas_importance_dead_lettered_total", reason=reason) == before[reason] + 1
    assert OmegaStore(redis_conn, keys).versions() == [1, 2]
    _assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (1, 2))


def test_an_entry_whose_importance_overflows_is_dead_lettered_and_the_rest_counted(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    """Finite rows of ~1e20 pass decoding but overflow Ω to inf; one must not poison the partial."""
    traffic = _traffic(digits, [(2, "a")], entries=6, seed=6)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.append_many(traffic[:3])
    huge = np.full((1, 64), 1e20, dtype=np.float32)
    stream.append_many([Sample(2, "a", huge)])
    stream.append_many(traffic[3:])
    before = _metric("mas_importance_dead_lettered_total", reason="non_finite_importance")

    _drain(_worker(_settings(tmp_path, keys), redis_conn, keys, registry, "w1"), stream)

    ((_, fields),) = redis_conn.xrange(keys.samples_dead)
    assert fields[b"reason"].startswith(b"non_finite_importance: ")
    assert fields[b"x"] == huge.tobytes()
    after = _metric("mas_importance_dead_lettered_total", reason="non_finite_importance")
    assert after == before + 1
    _assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (2,))


def test_an_entry_delivered_too_often_is_dead_lettered_before_it_is_tried(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.ensure_group()
    stream.append_many([Sample(1, "a", digits[:2])])
    assert len(stream.read("crashed", count=10, block_ms=None)) == 1
    for crashed in ("c1", "c2"):  # consumers that took it over and died without a trace
        assert len(stream.claim_stale(crashed, min_idle_ms=0, count=10)) == 1
    settings = _settings(tmp_path, keys, dead_letter_after=2, claim_min_idle_ms=0)

    _drain(_worker(settings, redis_conn, keys, registry, "w1"), stream)

    ((_, fields),) = redis_conn.xrange(keys.samples_dead)
    assert re.fullmatch(rb"retries_exhausted: delivered [45] times", fields[b"reason"])
    assert OmegaStore(redis_conn, keys).versions() == []


def test_two_workers_in_one_group_give_the_same_omega_as_one(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    traffic = _traffic(digits, [(1, "a"), (2, "a"), (2, "b")], entries=400, seed=3)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    # Short reclaim time: the workers also steal from each other, which the commit must survive.
    settings = _settings(tmp_path, keys, claim_min_idle_ms=100)
    workers = [_worker(settings, redis_conn, keys, registry, name) for name in ("w1", "w2")]
    stop = threading.Event()
    threads = [threading.Thread(target=w.run_forever, args=(stop,)) for w in workers]
    for thread in threads:
        thread.start()
    try:
        for start in range(0, len(traffic), 50):
            stream.append_many(traffic[start : start + 50])
        wait_until(lambda: _drained(stream), 30, interval=0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert sorted(redis_conn.hkeys(keys.omega_partials(2))) == [b"w1", b"w2"]
    _assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (1, 2))


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
    traffic = _traffic(digits, [(2, "a")], entries=8, seed=7)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.append_many(traffic)
    settings = _settings(tmp_path, keys, claim_min_idle_ms=200, dead_letter_after=2)
    workers = [_worker(settings, redis_conn, keys, registry, name) for name in ("w1", "w2")]
    conflicts = _metric("mas_importance_commit_conflicts_total")
    stop = threading.Event()
    threads = [threading.Thread(target=w.run_forever, args=(stop,)) for w in workers]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: _drained(stream), 30, interval=0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert redis_conn.xlen(keys.samples_dead) == 0
    assert _metric("mas_importance_commit_conflicts_total") == conflicts
    _assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (2,))


@pytest.fixture
def spawn(
    redis_url: str, keys: Keys, tmp_path: Path
) -> Iterator[Callable[[str], subprocess.Popen]]:
    """Starts `python -m worker.importance` as worker w1 with the given consumer name."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "MAS_KEY_PREFIX": keys.prefix,
        "MAS_DATA_DIR": str(tmp_path),
        "MAS_DEVICE": "cpu",
        "MAS_CHECKPOINT_EVERY": "2",
        "MAS_CLAIM_MIN_IDLE_MS": "300",
        "MAS_DEAD_LETTER_AFTER": "1000",
        "MAS_IMPORTANCE_METRICS_PORT": "0",
        "OMP_NUM_THREADS": "1",
    }
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
    traffic = _traffic(digits, [(1, "a"), (2, "a"), (2, "b")], entries=1200, seed=4)
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
        in_flight += _pending_of(redis_conn, keys, f"c{index}")
        process = spawn(f"c{index + 1}")
    wait_until(lambda: committed() == rows and _drained(stream), 30, interval=0.005)
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0

    assert in_flight > 0, "no kill caught the worker with delivered, uncommitted entries"
    assert all(_pending_of(redis_conn, keys, f"c{index}") == 0 for index in range(3))
    assert redis_conn.xlen(keys.samples_dead) == 0
    assert redis_conn.hkeys(keys.omega_partials(2)) == [b"w1"]
    _assert_omega_matches(omega, registry, traffic, (1, 2))


def test_layer_summary_groups_weight_and_bias_per_module() -> None:
    omega = {"trunk.1.weight": torch.tensor([[1.0, 3.0]]), "trunk.1.bias": torch.tensor([2.0])}
    reference = {"trunk.1.weight": torch.tensor([[1.0, 1.0]]), "trunk.1.bias": torch.tensor([2.0])}
    assert layer_summary(omega, reference) == {"trunk.1": {"mean": 2.0, "max": 3.0, "drift": 0.5}}
    assert layer_summary(omega)["trunk.1"]["drift"] is None
    zero = {name: torch.zeros_like(value) for name, value in reference.items()}
    assert layer_summary(omega, zero)["trunk.1"]["drift"] is None
    assert layer_summary(omega, {"trunk.1.weight": torch.ones(2, 1)})["trunk.1"]["drift"] is None
