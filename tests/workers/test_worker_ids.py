"""One live importance worker per Ω partial id: two workers started on one host with default
settings take distinct ids, and Ω still counts every row once."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from mas_stream.bootstrap import every
from mas_stream.store.keys import Keys
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import OmegaStore, SampleStream
from mas_stream.store.worker_ids import WorkerIdTaken, claim_worker_id
from tests.support.importance import assert_omega_matches, drained, make_traffic
from tests.support.paths import ROOT
from tests.support.processes import worker_env
from tests.support.waiting import wait_until


def test_claims_take_the_first_free_id_of_the_host(redis_conn: redis.Redis, keys: Keys) -> None:
    first = claim_worker_id(redis_conn, keys, None, "host")
    second = claim_worker_id(redis_conn, keys, None, "host")
    assert (first.worker_id, second.worker_id) == ("host", "host-2")
    assert first.renew() and second.renew()
    first.release()
    assert claim_worker_id(redis_conn, keys, None, "host").worker_id == "host"


def test_an_explicit_id_waits_out_a_dead_holder_and_refuses_a_live_one(
    redis_conn: redis.Redis, keys: Keys
) -> None:
    live = claim_worker_id(redis_conn, keys, "w", "host")
    with every(1.0, live.renew, name="renew"), pytest.raises(WorkerIdTaken, match="--worker-id"):
        claim_worker_id(redis_conn, keys, "w", "host")
    claim_worker_id(redis_conn, keys, "dead", "host")  # never renewed: as if its process died
    assert claim_worker_id(redis_conn, keys, "dead", "host").worker_id == "dead"


def test_two_default_workers_on_one_host_count_every_row_once(
    redis_url: str,
    redis_conn: redis.Redis,
    keys: Keys,
    registry: ModelRegistry,
    digits: np.ndarray,
    tmp_path: Path,
) -> None:
    traffic = make_traffic(digits, [(2, "a"), (2, "b")], entries=400, seed=7)
    rows = sum(len(sample.rows) for sample in traffic)
    stream = SampleStream(redis_conn, keys, maxlen=100_000)
    omega = OmegaStore(redis_conn, keys)
    env = worker_env(
        redis_url,
        keys,
        tmp_path,
        device="cpu",
        importance_metrics_port="0",
        importance_linger_ms="0",
    )
    command = [sys.executable, "-m", "mas_stream", "worker", "importance"]
    logs = [(tmp_path / f"worker{i}.log").open("wb") for i in range(2)]
    workers = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log) for log in logs]
    host = socket.gethostname()
    try:
        claims = [keys.worker_id_claim(host), keys.worker_id_claim(f"{host}-2")]
        wait_until(lambda: redis_conn.exists(*claims) == 2, 60)  # both are up and reading
        for start in range(0, len(traffic), 50):
            stream.append_many(traffic[start : start + 50])
            time.sleep(0.05)
        wait_until(lambda: omega.counts(2).total == rows and drained(stream), 60, interval=0.05)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(20) for worker in workers]
    assert codes == [0, 0]
    assert len(redis_conn.hkeys(keys.omega_partials(2))) == 2, "both workers wrote one partial"
    assert redis_conn.xlen(keys.samples_dead) == 0
    assert_omega_matches(omega, registry, traffic, (2,))
