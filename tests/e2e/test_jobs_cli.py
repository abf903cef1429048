"""`mas-stream jobs` as an operator runs it, against a real API over a real socket (no trainer
runs, so a submitted job stays queued): the listing, a cancel, and the service's refusal."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from mas_stream.bench.suites import load_suite
from mas_stream.client import ServiceClient
from mas_stream.store.keys import Keys
from tests.support.api import api_settings
from tests.support.processes import mas_stream_cli
from tests.support.serving import run_api


def jobs(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return mas_stream_cli("jobs", "--url", url, *argv)


def test_jobs_lists_cancels_and_says_why_it_cannot(
    tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    digits = load_suite("split-digits").tasks[0]
    with run_api(api_settings(tmp_path, redis_url, keys)) as url, ServiceClient(url) as client:
        empty = jobs(url)
        assert (empty.returncode, empty.stdout.strip()) == (
            0,
            "no jobs yet: `mas-stream submit NAME FILE` queues one",
        )
        accepted = client.submit_task("digits", digits.x_train.numpy(), digits.y_train.numpy())
        job_id = accepted["job_id"]
        listed = jobs(url)
        assert listed.returncode == 0, listed.stderr
        header, row = listed.stdout.splitlines()
        columns = "job task status progress created version error"
        assert header.split() == columns.split()
        assert row.split()[:4] == [job_id, "digits", "queued", "0%"]

        cancelled = jobs(url, "--cancel", job_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.splitlines()[0] == f"job {job_id}: canceled"
        assert cancelled.stdout.splitlines()[2].split()[2] == "canceled"
        assert client.job(job_id).status == "canceled"
        again = jobs(url, "--cancel", job_id)
        assert again.stdout.splitlines()[0] == f"job {job_id}: canceled"

        unknown = jobs(url, "--cancel", "no-such-job")
        assert unknown.returncode == 1
        assert unknown.stderr.startswith("DELETE /v1/jobs/no-such-job: 404 "), unknown.stderr
        assert "Traceback" not in unknown.stderr

        as_json = jobs(url, "--json", "--limit", "5")
        assert json.loads(as_json.stdout) == client.jobs(5).model_dump(mode="json", by_alias=True)
