"""The importance worker as its tests drive it: digits traffic, in-process workers, and the
reference Ω (`mas.importance_sums` over the same inputs at each version's parameters)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch

import mas
from mas_stream.records.omega import OmegaCounts
from mas_stream.records.sample import Sample
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import OmegaStore, SampleStream
from tests.support.settings import make_settings
from worker.importance import METRICS, ImportanceWorker

SPEC = {"family": "mlp", "input_shape": [64], "hidden": [32], "activation": "relu"}
Traffic = list[Sample]


def worker_settings(tmp_path: Path, keys: Keys, **overrides: Any) -> Settings:
    """Checkpoints every second read and no reclaiming unless a test asks for it."""
    defaults: dict[str, Any] = {
        "checkpoint_every": 2,
        "claim_min_idle_ms": 60_000,
        "importance_batch": 64,
        "importance_metrics_port": 0,
    }
    return make_settings(tmp_path, keys, **{**defaults, **overrides})


def make_traffic(
    digits: np.ndarray, plan: list[tuple[int, str]], entries: int, seed: int
) -> Traffic:
    """Entries of 1 to 8 digit rows, cycling over the (version, task) plan."""
    rng = np.random.default_rng(seed)
    return [
        Sample(*plan[i % len(plan)], digits[rng.integers(0, len(digits), rng.integers(1, 9))])
        for i in range(entries)
    ]


def expected_omega(
    registry: ModelRegistry, traffic: Traffic, version: int
) -> dict[str, torch.Tensor]:
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


def assert_omega_matches(
    omega: OmegaStore, registry: ModelRegistry, traffic: Traffic, versions: tuple[int, ...]
) -> None:
    for version in versions:
        merged = omega.merged(version)
        expected = expected_omega(registry, traffic, version)
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


def drained(stream: SampleStream) -> bool:
    stats = stream.stats()
    return stats.pending == 0 and stats.lag == 0


def drain(worker: ImportanceWorker, stream: SampleStream) -> None:
    deadline = time.monotonic() + 30
    while not drained(stream):
        assert time.monotonic() < deadline, "worker did not drain the stream"
        worker.run_once()


def make_worker(
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


def pending_of(redis_conn: redis.Redis, keys: Keys, consumer: str) -> int:
    summary = redis_conn.xpending(keys.samples, keys.importance_group)
    return sum(c["pending"] for c in summary["consumers"] if c["name"] == consumer.encode())


def worker_metric(name: str, **labels: str) -> float:
    return METRICS.get_sample_value(name, labels) or 0.0
