"""The trainer worker against real Redis, real artifacts and real digits: versions, Ω source,
retention gate, cancellation. Trainers that die or lose their lease: test_trainer_recovery.py."""

from __future__ import annotations

import threading
import time

import redis
import torch

import mas
from mas.accumulator import ImportanceAccumulator
from mas_stream.records.job import OmegaSource
from mas_stream.records.omega import PartialCheckpoint
from mas_stream.records.sample import Sample
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import redis_client
from mas_stream.store.traffic import OmegaStore, SampleStream
from tests.support.trainer import (
    TrainerStores,
    digits_task,
    make_trainer,
    trainer_after_task0,
    training_in_background,
    upload,
)
from tests.support.waiting import wait_until
from worker.importance import ImportanceWorker


def test_tasks_become_versions_with_data_importance_and_frozen_old_heads(
    settings: Settings, stores: TrainerStores, redis_conn: redis.Redis, keys: Keys
) -> None:
    trainer = make_trainer(settings, redis_conn, keys)
    first = upload(stores, "task0", *digits_task(0))
    assert trainer.run_once(block_ms=2000)
    job = stores.jobs.get(first)
    assert job.status == "succeeded", job.error
    assert job.result.version == 1 and job.result.activated
    assert job.result.accuracy_after["task0"] > 0.9
    assert stores.registry.current_version() == 1

    second = upload(stores, "task1", *digits_task(1), lam=2.0)
    assert trainer.run_once(block_ms=2000)
    result = stores.jobs.get(second).result
    assert result.version == 2 and result.parent == 1 and result.activated
    assert result.omega.source == "data" and result.omega.samples > 0
    assert set(result.accuracy_after) == {"task0", "task1"}
    manifest = stores.registry.manifest(2)
    assert manifest.info.lam == 2.0
    v1 = stores.registry.load(1).model
    v2 = stores.registry.load(2).model
    for name, value in v1.heads["task0"].state_dict().items():
        assert torch.equal(value, v2.heads["task0"].state_dict()[name])
    boundary = stores.registry.extra_tensors(2, "omega_boundary")
    consolidated = stores.registry.extra_tensors(2, "omega_consolidated")
    assert boundary is not None and consolidated is not None
    assert boundary.keys() == dict(v1.named_parameters()).keys()


def test_traffic_importance_is_used_when_enough_was_served(
    settings: Settings, stores: TrainerStores, redis_conn: redis.Redis, keys: Keys
) -> None:
    trainer = trainer_after_task0(settings, stores, redis_conn, keys)
    x, _ = digits_task(0)
    SampleStream(redis_conn, keys, maxlen=10_000).append_many([Sample(1, "task0", x[:150])])
    worker = ImportanceWorker(
        settings, redis_conn, keys, stores.registry, worker_id="w", consumer="w-1"
    )
    while worker.run_once():
        pass
    job = upload(stores, "task1", *digits_task(1))
    trainer.run_once(block_ms=2000)
    result = stores.jobs.get(job).result
    assert result.omega == OmegaSource(source="traffic", samples=150)
    model = stores.registry.load(1).model
    expected = mas.compute_importance(model, torch.from_numpy(x[:150]), task="task0")
    boundary = stores.registry.extra_tensors(2, "omega_boundary")
    for name, value in expected.items():
        torch.testing.assert_close(boundary[name], value, rtol=1e-5, atol=1e-7)


def test_a_non_finite_traffic_omega_is_refused_for_data_omega(
    settings: Settings, stores: TrainerStores, redis_conn: redis.Redis, keys: Keys
) -> None:
    """A partial committed with an overflowed row must not turn the penalty into NaN."""
    trainer = trainer_after_task0(settings, stores, redis_conn, keys)
    model = stores.registry.load(1).model
    poisoned = ImportanceAccumulator()
    sums = {name: torch.ones_like(p, dtype=torch.float64) for name, p in model.named_parameters()}
    sums["trunk.1.weight"][0, 0] = float("inf")
    poisoned.add(sums, 150)
    omega = OmegaStore(redis_conn, keys)
    omega.load_partial(1, "old-worker")
    checkpoint = PartialCheckpoint(
        worker="old-worker", consumer="old-consumer", task_counts={1: {"task0": 150}}, entry_ids=()
    )
    assert omega.commit({1: poisoned}, checkpoint)

    job = upload(stores, "task1", *digits_task(1))
    trainer.run_once(block_ms=2000)

    record = stores.jobs.get(job)
    assert record.status == "succeeded", record.error
    result = record.result
    assert result.omega.source == "data"
    assert result.omega.traffic_samples == 150
    assert "not finite" in result.omega.traffic_rejected
    assert result.activated and stores.registry.current_version() == 2
    boundary = stores.registry.extra_tensors(2, "omega_boundary")
    assert all(torch.isfinite(value).all() for value in boundary.values())


def test_retention_gate_holds_a_version_that_forgets(
    settings: Settings, stores: TrainerStores, redis_conn: redis.Redis, keys: Keys
) -> None:
    gated = settings.model_copy(
        update={
            "head_mode": "shared",
            "shared_classes": 2,
            "retention_max_drop": 0.05,
            "mas_lambda": 0.0,
        }
    )
    trainer = make_trainer(gated, redis_conn, keys)
    x, y = digits_task(0)
    upload(stores, "task0", x, y)
    trainer.run_once(block_ms=2000)
    job = upload(stores, "flipped", x, 1 - y)
    trainer.run_once(block_ms=2000)
    result = stores.jobs.get(job).result
    assert result.version == 2 and not result.activated
    assert "held for manual activation" in result.reason and "task0" in result.reason
    assert stores.registry.current_version() == 1


def test_a_job_overtaken_by_another_activation_trains_again_on_top_of_it(
    settings: Settings, stores: TrainerStores, redis_conn: redis.Redis, keys: Keys
) -> None:
    """Two trainers start from v1; the slow one must not replace v2 with a model lacking task2."""
    trainer_after_task0(settings, stores, redis_conn, keys)
    slow_job = upload(stores, "task1", *digits_task(1), epochs=800)
    slow = make_trainer(settings, redis_conn, keys, consumer="slow")
    runner = training_in_background(slow, stores, slow_job)
    fast_job = upload(stores, "task2", *digits_task(2), epochs=20)
    fast = make_trainer(settings, redis_conn, keys, consumer="fast")
    assert fast.run_once(block_ms=2000)
    runner.join(120)

    fast_result = stores.jobs.get(fast_job).result
    assert (fast_result.parent, fast_result.version, fast_result.restarts) == (1, 2, 0)
    slow_record = stores.jobs.get(slow_job)
    assert slow_record.status == "succeeded", slow_record.error
    slow_result = slow_record.result
    assert (slow_result.parent, slow_result.version, slow_result.restarts) == (2, 3, 1)
    assert slow_result.activated
    assert stores.registry.current_version() == 3
    assert set(stores.registry.load(3).model.tasks) == {"task0", "task1", "task2"}
    assert [m.version for m in stores.registry.list_versions()] == [1, 2, 3]


def test_cancel_while_running_leaves_the_served_version(
    settings: Settings, stores: TrainerStores, redis_conn: redis.Redis, keys: Keys
) -> None:
    trainer = trainer_after_task0(settings, stores, redis_conn, keys)
    job = upload(stores, "task1", *digits_task(1), epochs=2000)
    runner = training_in_background(trainer, stores, job)
    stores.jobs.request_cancel(job)
    runner.join(60)
    record = stores.jobs.get(job)
    assert record.status == "canceled"
    assert stores.registry.current_version() == 1
    assert [m.version for m in stores.registry.list_versions()] == [1]


def test_run_forever_outlives_redis_timeouts(
    settings: Settings, stores: TrainerStores, redis_url: str, keys: Keys
) -> None:
    """A client timeout shorter than a blocking read: every idle read times out."""
    impatient = redis_client(redis_url, timeout=0.2)
    trainer = make_trainer(settings, impatient, keys)
    stop = threading.Event()
    runner = threading.Thread(target=trainer.run_forever, args=(stop,))
    runner.start()
    try:
        time.sleep(1.5)
        assert runner.is_alive()
        job = upload(stores, "task0", *digits_task(0), epochs=2)
        wait_until(lambda: stores.jobs.get(job).status == "succeeded", 60)
    finally:
        stop.set()
        runner.join(10)
        impatient.close()
