"""`mas-stream serve` under load: a soak of mixed traffic (predict JSON, OIP binary, admin reads)
at concurrency 32 while a task trains and three versions are swapped in (the new one, a
rollback, the promote back), then a full restart on the same data directory under traffic.

The soak lasts MAS_SOAK_SECONDS (60 in CI); the long variant:

    MAS_SOAK_SECONDS=600 .venv/bin/python -m pytest -s tests/reliability/test_soak.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mas_stream.client import ServiceClient
from mas_stream.records.sample import Sample
from mas_stream.store.traffic import SampleStream
from tests.api.test_forwarding_after_stall import counted
from tests.reliability.audit import (
    assert_omega_is_the_streams,
    staging_leftovers,
    wait_until_counted,
    wait_until_drained,
)
from tests.reliability.load import Traffic, failures, served, served_rows, summary
from tests.reliability.monitor import Monitor
from tests.reliability.serving import ServedDirectory
from tests.reliability.tasks import Digits, activate, learn, models, shuffled

SOAK_SECONDS = float(os.environ.get("MAS_SOAK_SECONDS", "60"))
CONCURRENCY = 32
# Resident memory is compared from the end of the first third on (20 s of 60): by then the
# model versions are loaded and the allocator's arenas of 32 connections have grown.
WARM_UP_SECONDS = SOAK_SECONDS / 3
RSS_GROWTH_MIB = 16.0
# Stream entries the importance worker has not committed (each holds one forwarder write, at
# most one per 20 ms): the worker is niced, so it falls behind while the trainer and 32 clients
# take the cores, and catches up; 1,000 entries is 20 s of writes.
BACKLOG_ENTRIES = 1000
SOAK_EPOCHS = 15
ANSWERS = 150


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Iterator[ServedDirectory]:
    directory = ServedDirectory(Path(tmp_path_factory.mktemp("serve")) / "data")
    directory.start()
    try:
        with ServiceClient(directory.url) as client:
            job = client.wait_for_job(learn(directory.url, "t0", digits, epochs=3), timeout=180)
            assert job.status == "succeeded", job
        directory.wait_until_ready()
        yield directory
    finally:
        directory.stop()


def settle_and_check(service: ServedDirectory, before: tuple[float, float], sent: int) -> None:
    """Every row the running API answered since `before` forwarded, none dropped; Ω equal to a
    direct computation on every row the service answered; nothing staged left on disk."""
    forwarded, dropped = wait_until_counted(service.url, before, sent)
    assert (forwarded, dropped) == (sent, 0)
    client = service.redis()
    try:
        wait_until_drained(client, service.keys)
        assert_omega_is_the_streams(client, service.keys, service.models_dir, service.served)
    finally:
        client.close()
    assert staging_leftovers(service.models_dir) == []


def test_soak_mixed_traffic_through_training_and_three_swaps(
    service: ServedDirectory, digits: Digits
) -> None:
    first, _ = models(service.url)
    before = counted(service.url)
    client = service.redis()
    stream = SampleStream(client, service.keys, maxlen=1)
    with (
        Monitor(service.api_pid(), stream) as monitor,
        Traffic(service.url, digits[0], threads=CONCURRENCY, seed=10) as load,
        ServiceClient(service.url) as admin,
    ):
        started = time.monotonic()
        job = admin.wait_for_job(
            learn(service.url, "soak", shuffled(digits, 7), SOAK_EPOCHS), timeout=600
        )
        assert job.status == "succeeded" and job.result is not None, job
        trained = job.result.version
        load.wait_for_version(trained, CONCURRENCY)
        for version in (first, trained):  # a rollback, then the promote back
            activate(service.url, version)
            load.wait_for_version(version, CONCURRENCY)
        swapped = time.monotonic() - started
        time.sleep(max(0.0, started + SOAK_SECONDS - time.monotonic()))
    client.close()
    outcomes, elapsed = load.outcomes, time.monotonic() - started
    base, growth = monitor.growth_after(WARM_UP_SECONDS)
    backlog = max(reading.backlog for reading in monitor.readings)
    print(
        f"soak {elapsed:.0f}s at c{CONCURRENCY}: {summary(outcomes)}, "
        f"{len(outcomes) / elapsed:.0f} req/s; trained and swapped by {swapped:.0f}s; API RSS "
        f"{monitor.readings[0].rss_mib:.0f} MiB at start, {base:.0f} at {WARM_UP_SECONDS:.0f}s, "
        f"+{growth:.1f} after; stream backlog at most {backlog} entries"
    )

    assert not failures(outcomes), failures(outcomes)[:3]
    assert {sample.version for sample in served(outcomes)} == {first, trained}
    assert set(load.seen) <= set(models(service.url)[1])
    assert growth <= RSS_GROWTH_MIB
    assert backlog <= BACKLOG_ENTRIES
    service.served += served(outcomes)
    settle_and_check(service, before, served_rows(outcomes))


def snapshot(service: ServedDirectory, digits: Digits) -> dict[str, Any]:
    """What a restart must bring back as it was: versions, tasks, jobs and a prediction (whose
    rows join those the service answered)."""
    rows = digits[0][:8]
    with httpx.Client(base_url=service.url, timeout=30) as client:
        answer = client.post("/v1/predict", json={"task": "t0", "inputs": rows.tolist()}).json()
        state = {path: client.get(path).json() for path in ("/v1/models", "/v1/tasks", "/v1/jobs")}
    service.served.append(Sample(int(answer["model_version"]), "t0", rows))
    return {**state, "predict": answer}


def test_a_full_restart_of_serve_brings_everything_back(
    service: ServedDirectory, digits: Digits
) -> None:
    before = counted(service.url)
    with Traffic(service.url, digits[0], threads=4, seed=11) as warm:
        warm.wait_for_answers(ANSWERS)
    service.served += served(warm.outcomes)
    state = snapshot(service, digits)
    settle_and_check(service, before, served_rows(warm.outcomes) + 8)
    with Traffic(service.url, digits[0], threads=4, seed=12) as load:
        load.wait_for_answers(ANSWERS)
        stopping = time.monotonic()
        code = service.stop()
        stopped = time.monotonic()
        service.start()
        back = service.wait_until_ready()
        restored = snapshot(service, digits)
        load.wait_for_answers(ANSWERS)
    outcomes = load.outcomes
    print(f"serve restart: {summary(outcomes)}, down {back - stopping:.1f}s")

    assert code == 0
    assert restored == state
    unexplained = [
        o
        for o in failures(outcomes)
        if o.status not in (None, 503) or o.ended < stopping or o.started > back
    ]
    assert not unexplained, unexplained[:3]
    # Stopped with SIGTERM, the old API wrote its buffer: every row it answered is in Ω.
    service.served += served(outcomes)
    answered_since = served_rows([o for o in outcomes if o.ended > stopped]) + 8
    settle_and_check(service, (0.0, 0.0), answered_since)
