"""The trainer's expected failures as a user reads them: a diverged job is one log line with the
job, the step and what to change; a metrics port that was set and is taken stops the trainer in
one line naming the setting, and /readyz shows the part and the reason; a Redis that does not
answer yet is waited for."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from mas_stream.records.job import JobStatus
from mas_stream.settings import Settings
from mas_stream.startup import CANNOT_START
from mas_stream.store.keys import Keys
from mas_stream.store.parts import part_name
from mas_stream.store.redis_server import EmbeddedRedis
from tests.support.api import api_settings
from tests.support.processes import worker_env
from tests.support.serving import run_api
from tests.support.trainer import TrainerStores, digits_task, make_trainer, upload
from tests.support.waiting import wait_until


def test_a_diverged_job_is_one_error_line_with_the_job_the_step_and_the_hint(
    settings: Settings,
    stores: TrainerStores,
    redis_conn: redis.Redis,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    steep = settings.model_copy(update={"learning_rate": 1e12, "epochs": 1})
    trainer = make_trainer(steep, redis_conn, keys)
    job_id = upload(stores, "task0", *digits_task(0))
    with caplog.at_level(logging.INFO, logger="worker.trainer"):
        assert trainer.run_once(block_ms=2000)
    job = stores.jobs.get(job_id)
    assert job is not None and job.status == JobStatus.FAILED
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    line = errors[0].getMessage()
    assert "\n" not in line
    assert line.startswith(f"job {job_id} (task task0) failed: TrainingDiverged: loss is ")
    assert " at step " in line
    assert line.endswith(
        "; submit the task again with a lower --lambda (or a lower MAS_LEARNING_RATE)"
    )
    assert job.error == line.split(" failed: ", 1)[1]


def test_a_taken_metrics_port_stops_the_trainer_in_one_line_shown_in_readyz(
    tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = worker_env(redis_url, keys, tmp_path / "data", trainer_metrics_port=str(port))
        trainer = subprocess.run(
            [sys.executable, "-m", "mas_stream", "worker", "trainer"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    expected = (
        f"cannot listen on 0.0.0.0:{port} (MAS_TRAINER_METRICS_PORT): address already in use; "
        "another process listens there (another mas-stream serve?): stop it, or set "
        "MAS_TRAINER_METRICS_PORT to a free port, or to 0 for none"
    )
    assert trainer.returncode == CANNOT_START
    assert "Traceback" not in trainer.stderr
    assert trainer.stderr.splitlines()[-1] == expected
    with run_api(api_settings(tmp_path, redis_url, keys)) as base:
        ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 503  # no model yet, and the reason jobs would not run
    body = ready.json()
    assert body["parts_stopped"] == {part_name("trainer"): expected}
    assert f"{part_name('trainer')} cannot start: {expected}" in body["detail"]


def test_a_trainer_started_before_its_redis_waits_for_it_and_then_starts(
    tmp_path: Path, keys: Keys
) -> None:
    """One line a try, without the URL's password, and no traceback; started once Redis is."""
    server = EmbeddedRedis(tmp_path / "late-redis")
    url = f"unix://:secret@{server.socket_path}"
    env = worker_env(url, keys, tmp_path / "data", trainer_metrics_port="0")
    log = tmp_path / "trainer.log"
    with log.open("w") as output:
        trainer = subprocess.Popen(
            [sys.executable, "-m", "mas_stream", "worker", "trainer"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: log.read_text().count("does not answer") >= 2, timeout=60)
        assert trainer.poll() is None
        server.start()
        wait_until(lambda: "started" in log.read_text(), timeout=60)
        assert trainer.poll() is None
    finally:
        trainer.terminate()
        trainer.wait(30)
        server.stop()
    text = log.read_text()
    assert "Traceback" not in text and "secret" not in text
    assert f"Redis at unix://{server.socket_path} does not answer (" in text
