"""MAS_TRAIN_PROCS=2: the trainer runs a job as a torchrun DDP job of two gloo processes, against
real Redis and real digits, and the result is the single-process one; a run whose rank dies is
run again, one whose rank's own code raises is not; a cancelled DDP job stops its ranks,
publishes nothing and leaves no bundle behind; a killed trainer's bundle is removed when a
trainer starts."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from mas.learning import TrainingDiverged
from mas_stream.settings import Settings
from mas_stream.store.keys import Keys
from tests.support.processes import worker_env
from tests.support.settings import make_settings
from tests.support.trainer import (
    TrainerStores,
    digits_task,
    make_trainer,
    progress,
    upload,
)
from tests.support.waiting import wait_until
from worker.distributed_training import Torchrun
from worker.trainer import METRICS


def _settings(tmp_path: Path, keys: Keys, redis_url: str, procs: int) -> Settings:
    return make_settings(
        tmp_path,
        keys,
        redis_url,
        hidden=[32],
        epochs=10,
        retention_max_drop=1.0,
        min_traffic_samples=100,
        job_lease_ms=1000,
        trainer_metrics_port=0,
        train_procs=procs,
    )


def _learn_two_tasks(
    tmp_path: Path, keys: Keys, redis_url: str, redis_conn: redis.Redis, procs: int
) -> tuple[TrainerStores, str]:
    """Task 0 on one process (v1), then task 1 on `procs` on top of it (v2, with the penalty)."""
    single = _settings(tmp_path, keys, redis_url, 1)
    stores = TrainerStores.open(single, redis_conn, keys)
    upload(stores, "task0", *digits_task(0))
    assert make_trainer(single, redis_conn, keys).run_once(block_ms=2000)
    job = upload(stores, "task1", *digits_task(1), lam=2.0)
    distributed = _settings(tmp_path, keys, redis_url, procs)
    assert make_trainer(distributed, redis_conn, keys, consumer="ddp").run_once(block_ms=2000)
    return stores, job


def _training_processes(data_dir: Path, *, ranks_only: bool = False) -> dict[int, int]:
    """pid → process group of torchrun and its ranks working on a bundle under `data_dir` (of the
    ranks alone, with `ranks_only`)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            group = os.getpgid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
        if b"worker.train_rank" not in command:
            continue
        if ranks_only and b"torch.distributed.run" in command:  # torchrun's own
            continue
        if any(str(data_dir).encode() in a for a in command):
            found[int(entry.name)] = group
    return found


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_processes_match_one_and_publish_one_version(
    tmp_path: Path, keys: Keys, redis_url: str, redis_conn: redis.Redis
) -> None:
    one, one_job = _learn_two_tasks(tmp_path / "one", keys, redis_url, redis_conn, 1)
    ddp_keys = Keys(prefix=f"{keys.prefix}-ddp")
    two, two_job = _learn_two_tasks(tmp_path / "two", ddp_keys, redis_url, redis_conn, 2)

    expected, record = one.jobs.get(one_job), two.jobs.get(two_job)
    assert record is not None and expected is not None
    assert record.status == "succeeded", record.error
    assert record.result is not None and expected.result is not None
    assert record.result.version == 2 and record.result.parent == 1 and record.result.activated
    assert [m.version for m in two.registry.list_versions()] == [1, 2]
    after, reference = record.result.accuracy_after, expected.result.accuracy_after
    assert set(after) == {"task0", "task1"} and after["task1"] > 0.9
    for task, accuracy in reference.items():
        assert abs(after[task] - accuracy) <= 0.01, (task, after, reference)
    assert record.progress == 1.0 and record.step == record.total_steps > 0
    assert list((tmp_path / "two" / "data" / "training").iterdir()) == []


def _long_ddp_job(
    tmp_path: Path, keys: Keys, redis_url: str, redis_conn: redis.Redis
) -> tuple[Settings, TrainerStores, str]:
    """Two-process settings and a queued job far too long to finish during a test."""
    settings = _settings(tmp_path, keys, redis_url, 2)
    stores = TrainerStores.open(settings, redis_conn, keys)
    return settings, stores, upload(stores, "task0", *digits_task(0), epochs=2000)


def test_cancelled_ddp_job_stops_its_ranks_and_publishes_nothing(
    tmp_path: Path, keys: Keys, redis_url: str, redis_conn: redis.Redis
) -> None:
    settings, stores, job = _long_ddp_job(tmp_path, keys, redis_url, redis_conn)
    trainer = make_trainer(settings, redis_conn, keys)
    runner = threading.Thread(target=trainer.run_once, kwargs={"block_ms": 2000})
    runner.start()
    try:
        wait_until(lambda: progress(stores, job) > 0, timeout=60)  # torchrun starts in seconds
        processes = _training_processes(settings.data_dir)
        assert len(processes) >= 3, processes  # torchrun and its two ranks
        wait_until(lambda: (METRICS.get_sample_value("mas_trainer_job_progress_ratio") or 0) > 0)
    finally:
        stores.jobs.request_cancel(job)
        runner.join(60)
    record = stores.jobs.get(job)
    assert record is not None and record.status == "canceled", record
    assert stores.registry.list_versions() == [] and stores.registry.current_version() is None
    assert not any(_group_alive(group) for group in set(processes.values()))
    assert _training_processes(settings.data_dir) == {}
    assert list((settings.data_dir / "training").iterdir()) == []


def test_a_rank_that_dies_mid_run_is_started_again_with_the_whole_run(
    tmp_path: Path, keys: Keys, redis_url: str, redis_conn: redis.Redis
) -> None:
    settings = _settings(tmp_path, keys, redis_url, 2)
    stores = TrainerStores.open(settings, redis_conn, keys)
    job = upload(stores, "task0", *digits_task(0), epochs=60)
    runner = threading.Thread(target=make_trainer(settings, redis_conn, keys).run_once)
    runner.start()
    try:
        wait_until(lambda: progress(stores, job) > 0, timeout=60)
        ranks = list(_training_processes(settings.data_dir, ranks_only=True))
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGABRT)  # as a C++ abort in a rank would
        wait_until(
            lambda: not set(ranks) & set(_training_processes(settings.data_dir, ranks_only=True)),
            timeout=30,
        )
    finally:
        runner.join(300)
    record = stores.jobs.get(job)
    assert record is not None and record.status == "succeeded", record.error
    assert record.result is not None and record.result.version == 1
    assert record.progress == 1.0
    (rerun,) = record.result.reruns or [None]
    assert rerun is not None and rerun.startswith("run 1 failed at step "), rerun
    assert ": rank 1, Signal 6 (SIGABRT) received by PID " in rerun, rerun
    assert rerun.endswith("; trained again from step 0"), rerun
    assert list((settings.data_dir / "training").iterdir()) == []


def test_a_rank_whose_own_code_raises_fails_the_job_at_once_with_its_error(
    tmp_path: Path,
    keys: Keys,
    redis_url: str,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same bundle would raise again: no second run, and the job says what the rank said."""
    spec = {"family": "factory", "factory": "tests.support.trunks:fails_in_ranks"}
    settings = make_settings(
        tmp_path,
        keys,
        redis_url,
        model_spec=json.dumps({**spec, "input_shape": [64]}),
        retention_max_drop=1.0,
        trainer_metrics_port=0,
        train_procs=2,
    )
    stores = TrainerStores.open(settings, redis_conn, keys)
    job = upload(stores, "task0", *digits_task(0), epochs=2)
    with caplog.at_level(logging.WARNING, logger="worker.distributed_training"):
        assert make_trainer(settings, redis_conn, keys).run_once(block_ms=2000)
    record = stores.jobs.get(job)
    assert record is not None and record.status == "failed", record
    assert record.error is not None and record.error.startswith("RankRaised: rank "), record.error
    assert "ValueError: this trunk cannot run in a torchrun rank" in record.error
    assert [r.getMessage() for r in caplog.records if "failed; again" in r.getMessage()] == []
    assert stores.registry.list_versions() == []
    assert list((settings.data_dir / "training").iterdir()) == []


def test_a_killed_trainers_bundle_is_removed_when_a_trainer_starts(
    tmp_path: Path, keys: Keys, redis_url: str, redis_conn: redis.Redis
) -> None:
    settings, stores, job = _long_ddp_job(tmp_path, keys, redis_url, redis_conn)
    env = worker_env(
        redis_url, keys, settings.data_dir, job_lease_ms="1000", trainer_metrics_port="0"
    )
    env["MAS_TRAIN_PROCS"] = "2"
    trainer = [sys.executable, "-m", "mas_stream", "worker", "trainer"]
    bundles = settings.data_dir / "training"
    killed = subprocess.Popen(trainer, env=env)
    try:
        wait_until(lambda: progress(stores, job) > 0, timeout=90)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    [bundle] = list(bundles.iterdir())
    assert bundle.name.startswith(f"task0.{killed.pid}@")
    wait_until(lambda: _training_processes(settings.data_dir) == {}, timeout=30)  # ranks follow
    assert bundle.is_dir()

    restarted = subprocess.Popen(trainer, env=env)
    try:
        wait_until(lambda: not bundle.exists(), timeout=90)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(30)
    assert list(bundles.iterdir()) == []
    assert stores.registry.list_versions() == []


def _python(*lines: str) -> list[str]:
    """A stand-in for torchrun that prints what a run's rank 0 and stderr would."""
    return [sys.executable, "-c", "\n".join(["import sys", *lines])]


def test_a_run_fails_with_its_stderr_diverges_or_keeps_weights_written_before_a_crash() -> None:
    step = json.dumps({"epoch": 0, "step": 1, "total_steps": 4, "loss": 0.5})
    # A rank's own error, then torchrun's summary table of every rank's exit (17 lines a rank).
    failing = _python(
        f"print({step!r})",
        "print('rank 1: CUDA error', file=sys.stderr)",
        "[print(f'torchrun summary line {n}', file=sys.stderr) for n in range(34)]",
        "sys.exit(3)",
    )
    seen: list[float] = []
    with Torchrun(failing) as run, pytest.raises(RuntimeError, match=r"status 3: .*CUDA error"):
        run.follow(lambda progress: seen.append(progress.fraction), lambda: False)
    assert seen == [0.25]
    done = json.dumps({"done": True, "steps": 4, "final_loss": 0.1})
    with Torchrun(_python(f"print({done!r})", "sys.exit(3)")) as run:
        assert run.follow(None, lambda: False)["steps"] == 4
    diverged = json.dumps({"diverged": "loss is nan at step 3 of 4"})
    noisy = _python("print('a library prints')", f"print({diverged!r})")
    with Torchrun(noisy) as run, pytest.raises(TrainingDiverged, match="nan at step 3"):
        run.follow(None, lambda: False)
    with Torchrun(_python("print('{}')")) as run, pytest.raises(RuntimeError, match="weights"):
        run.follow(None, lambda: False)
