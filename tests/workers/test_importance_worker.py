"""The importance worker end to end: real Redis, real models, digits traffic.

Reference Ω is `mas.importance_sums` over the same inputs at each version's parameters; the worker
must match it, a second worker in the group included. Restarts, reclaims and real SIGKILLs:
test_importance_worker_faults.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from mas.drift import layer_summary
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
    worker_metric,
    worker_settings,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("one_thread")


def test_worker_omega_equals_importance_sums_per_version_and_task(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    traffic = make_traffic(digits, [(1, "a"), (2, "a"), (2, "b"), (2, "b")], entries=300, seed=0)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.append_many(traffic)
    applied_before = worker_metric("mas_importance_samples_applied_total")
    worker = make_worker(worker_settings(tmp_path, keys), redis_conn, keys, registry, "w1")

    drain(worker, stream)

    omega = OmegaStore(redis_conn, keys)
    assert omega.versions() == [1, 2]
    assert_omega_matches(omega, registry, traffic, (1, 2))
    rows = sum(len(sample.rows) for sample in traffic)
    assert worker_metric("mas_importance_samples_applied_total") - applied_before == rows

    # Gauges refresh at most once a second: the next loop after that publishes the current one's.
    time.sleep(1.05)
    worker.run_once()
    assert worker_metric("mas_importance_stream_length_entries") == 0  # acknowledged: trimmed
    assert worker_metric("mas_importance_stream_pending_entries") == 0
    merged = omega.merged(2)
    assert merged is not None
    summary = layer_summary(merged.mean(), registry.extra_tensors(2, "omega_boundary"))
    assert set(summary) == {"trunk.1", "heads.a", "heads.b"}
    for layer, values in summary.items():
        for stat, value in values.items():
            series = f"mas_importance_layer_{stat}{'_ratio' if stat == 'drift' else ''}"
            assert worker_metric(series, layer=layer) == pytest.approx(value)


def test_corrupt_entries_and_unknown_versions_are_dead_lettered_not_counted(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    traffic = make_traffic(digits, [(1, "a"), (2, "b")], entries=20, seed=2)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.append_many(traffic[:10])
    corrupt = redis_conn.xadd(keys.samples, {"v": 2, "t": "a", "s": "2,64", "x": b"\x00" * 12})
    unknown = stream.append_many([Sample(99, "a", digits[:3])])
    assert unknown == 3
    stream.append_many(traffic[10:])
    settings = worker_settings(tmp_path, keys, dead_letter_after=2, claim_min_idle_ms=0)
    before = {
        r: worker_metric("mas_importance_dead_lettered_total", reason=r)
        for r in ("corrupt", "failed")
    }

    drain(make_worker(settings, redis_conn, keys, registry, "w1"), stream)

    dead = {fields[b"entry"]: fields for _, fields in redis_conn.xrange(keys.samples_dead)}
    assert len(dead) == 2
    assert dead[corrupt][b"reason"].startswith(b"corrupt: 12 data bytes, shape [2, 64] needs 512")
    (unknown_fields,) = (f for f in dead.values() if f[b"v"] == b"99")
    assert unknown_fields[b"reason"] == b"failed: UnknownVersion: model version 99 does not exist"
    for reason in ("corrupt", "failed"):
        assert (
            worker_metric("mas_importance_dead_lettered_total", reason=reason) == before[reason] + 1
        )
    assert OmegaStore(redis_conn, keys).versions() == [1, 2]
    assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (1, 2))


def test_an_entry_whose_importance_overflows_is_dead_lettered_and_the_rest_counted(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    """Finite rows of ~1e20 pass decoding but overflow Ω to inf; one must not poison the partial."""
    traffic = make_traffic(digits, [(2, "a")], entries=6, seed=6)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    stream.append_many(traffic[:3])
    huge = np.full((1, 64), 1e20, dtype=np.float32)
    stream.append_many([Sample(2, "a", huge)])
    stream.append_many(traffic[3:])
    before = worker_metric("mas_importance_dead_lettered_total", reason="non_finite_importance")

    drain(make_worker(worker_settings(tmp_path, keys), redis_conn, keys, registry, "w1"), stream)

    ((_, fields),) = redis_conn.xrange(keys.samples_dead)
    assert fields[b"reason"].startswith(b"non_finite_importance: ")
    assert fields[b"x"] == huge.tobytes()
    after = worker_metric("mas_importance_dead_lettered_total", reason="non_finite_importance")
    assert after == before + 1
    assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (2,))


def test_two_workers_in_one_group_give_the_same_omega_as_one(
    redis_conn: redis.Redis, keys: Keys, registry: ModelRegistry, digits: np.ndarray, tmp_path: Path
) -> None:
    traffic = make_traffic(digits, [(1, "a"), (2, "a"), (2, "b")], entries=400, seed=3)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    # Short reclaim time: the workers also steal from each other, which the commit must survive.
    settings = worker_settings(tmp_path, keys, claim_min_idle_ms=100)
    workers = [make_worker(settings, redis_conn, keys, registry, name) for name in ("w1", "w2")]
    stop = threading.Event()
    threads = [threading.Thread(target=w.run_forever, args=(stop,)) for w in workers]
    for thread in threads:
        thread.start()
    try:
        for start in range(0, len(traffic), 50):
            stream.append_many(traffic[start : start + 50])
        wait_until(lambda: drained(stream), 30, interval=0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert sorted(redis_conn.hkeys(keys.omega_partials(2))) == [b"w1", b"w2"]
    assert_omega_matches(OmegaStore(redis_conn, keys), registry, traffic, (1, 2))


def test_layer_summary_groups_weight_and_bias_per_module() -> None:
    omega = {"trunk.1.weight": torch.tensor([[1.0, 3.0]]), "trunk.1.bias": torch.tensor([2.0])}
    reference = {"trunk.1.weight": torch.tensor([[1.0, 1.0]]), "trunk.1.bias": torch.tensor([2.0])}
    assert layer_summary(omega, reference) == {"trunk.1": {"mean": 2.0, "max": 3.0, "drift": 0.5}}
    assert layer_summary(omega)["trunk.1"]["drift"] is None
    zero = {name: torch.zeros_like(value) for name, value in reference.items()}
    assert layer_summary(omega, zero)["trunk.1"]["drift"] is None
    assert layer_summary(omega, {"trunk.1.weight": torch.ones(2, 1)})["trunk.1"]["drift"] is None
