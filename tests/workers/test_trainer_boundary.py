"""The trainer crosses the same task boundary as the benchmark's strategies: on the same model
and inputs, with Ω from the stored data, its Ω_cons and θ* are those `mas.strategies` computes,
and its published version keeps exactly them. Real Redis, real artifacts, real digits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import redis
import torch

from mas.importance import Method, compute_importance
from mas.learning import Importance, cross_boundary
from mas.model import MultiHeadNet
from mas.penalty import QuadraticAnchor
from mas.strategies import Regularized, mas_importance
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from mas_stream.store.registry import OMEGA_BOUNDARY, OMEGA_CONSOLIDATED
from tests.support.settings import make_settings
from tests.support.trainer import TrainerStores, digits_task, make_trainer, upload
from worker.trainer import Trainer

LAM = 2.0


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, keys: Keys) -> Settings:
    """Fewer epochs than the other trainer tests, and γ < 1 so consolidation is visible."""
    return make_settings(
        tmp_path,
        keys,
        redis_url,
        hidden=[32],
        epochs=3,
        gamma=0.5,
        retention_max_drop=1.0,
        trainer_metrics_port=0,
    )


def assert_same(actual: Importance | None, expected: Importance) -> None:
    assert actual is not None
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-6, atol=0, msg=name)


def assert_same_anchor(
    actual: QuadraticAnchor, expected: QuadraticAnchor, at: MultiHeadNet
) -> None:
    """The anchors' λ, Ω and θ*, through what the penalty does with them: 2λΩ(θ − θ*) vanishes
    at the parameters `at` (θ* is them wherever Ω protects anything) and agrees anywhere else."""
    assert (actual.names, actual.lam) == (expected.names, expected.lam)
    assert_same(actual.importance, expected.importance)
    assert all(not gradient.any() for gradient in actual.gradient(at).values())
    moved = copy.deepcopy(at)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in moved.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    assert_same(actual.gradient(moved), expected.gradient(moved))


def learn(trainer: Trainer, stores: TrainerStores, index: int) -> int:
    """Digits task `index` learned as a job with λ = LAM; the version it published."""
    job_id = upload(stores, f"task{index}", *digits_task(index), lam=LAM)
    assert trainer.run_once(block_ms=2000)
    record = stores.jobs.get(job_id)
    assert record.status == "succeeded", record.error
    assert record.result.omega.source in {"none", "data"}
    return record.result.version


@pytest.mark.parametrize("method", ["exact", "local"])
def test_the_first_boundary_is_the_mas_strategys(
    method: Method,
    settings: Settings,
    stores: TrainerStores,
    redis_conn: redis.Redis,
    keys: Keys,
) -> None:
    trainer = make_trainer(
        settings.model_copy(update={"importance_method": method}), redis_conn, keys
    )
    assert learn(trainer, stores, 0) == 1
    upload(stores, "task1", *digits_task(1), lam=LAM)
    stored = {name: stores.datasets.load(name) for name in ("task0", "task1")}
    boundary, source = trainer.candidates.boundary(1, stores.registry.load(1).model, stored, LAM)
    assert source.source == "data" and source.samples == stored["task0"].x_train.shape[0]

    served = stores.registry.load(1).model
    strategy = Regularized(LAM, mas_importance(method), settings.gamma)
    strategy.after_task(served, "task0", stored["task0"].x_train, stored["task0"].y_train)
    assert strategy.consolidated is not None and strategy.anchor is not None
    assert_same(boundary.consolidated, strategy.consolidated)
    assert_same_anchor(boundary.anchor, strategy.anchor, served)

    assert trainer.run_once(block_ms=2000)
    assert stores.registry.current_version() == 2
    assert_same(stores.registry.extra_tensors(2, OMEGA_CONSOLIDATED), strategy.consolidated)
    assert_same(stores.registry.extra_tensors(2, OMEGA_BOUNDARY), boundary.omega_new)


def test_a_later_boundary_consolidates_the_parents_omega_with_gamma(
    settings: Settings, stores: TrainerStores, redis_conn: redis.Redis, keys: Keys
) -> None:
    """Ω_new over every known task's stored inputs, each sample weighted alike, onto γ·Ω_cons."""
    trainer = make_trainer(settings, redis_conn, keys)
    assert [learn(trainer, stores, index) for index in (0, 1)] == [1, 2]
    upload(stores, "task2", *digits_task(2), lam=LAM)
    stored = {name: stores.datasets.load(name) for name in ("task0", "task1", "task2")}
    boundary, _ = trainer.candidates.boundary(2, stores.registry.load(2).model, stored, LAM)

    served = stores.registry.load(2).model
    sizes = {task: stored[task].x_train.shape[0] for task in ("task0", "task1")}
    per_task = {task: compute_importance(served, stored[task].x_train, task=task) for task in sizes}
    omega_new = {
        name: sum(sizes[task] * per_task[task][name] for task in sizes) / sum(sizes.values())
        for name in per_task["task0"]
    }
    previous = stores.registry.extra_tensors(2, OMEGA_CONSOLIDATED)
    expected = cross_boundary(served, previous, omega_new, lam=LAM, gamma=settings.gamma)
    assert_same(boundary.omega_new, expected.omega_new)
    assert_same(boundary.consolidated, expected.consolidated)
    assert_same_anchor(boundary.anchor, expected.anchor, served)

    assert trainer.run_once(block_ms=2000)
    assert stores.registry.current_version() == 3
    assert_same(stores.registry.extra_tensors(3, OMEGA_CONSOLIDATED), expected.consolidated)
    assert_same(stores.registry.extra_tensors(3, OMEGA_BOUNDARY), expected.omega_new)
