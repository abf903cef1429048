"""Redis fails under mixed traffic: SIGKILLed and started again from its append-only file, or
frozen (SIGSTOP: connections accepted, nothing answered) past every client timeout, then resumed.

Predictions never fail (the served model is in the API's memory, sampled rows wait in its
buffer); reads that need Redis answer 503 until it is back. Afterwards every served row is
counted once as forwarded or dropped, Ω equals a direct computation on the rows the stream
holds, and what a crash lost is bounded by what Redis had not yet written to its file.
"""

from __future__ import annotations

import threading
import time

import httpx

from mas_stream.client import ServiceClient, ServiceError
from mas_stream.records.job import Job
from tests.reliability.load import Outcome, Traffic, failures, served, served_rows, summary
from tests.reliability.parts import PartsStack
from tests.reliability.tasks import Digits
from tests.support.waiting import wait_until

THREADS = 4
ANSWERS = 150
# Longer than the forwarder's Redis timeout (2 s) and its retry: a write's answer is lost.
FROZEN_SECONDS = 6.0
# appendfsync everysec: Redis's documented worst case is two seconds of writes.
AOF_WINDOW_SECONDS = 2.0


def ready(url: str) -> bool:
    try:
        return bool(httpx.get(f"{url}/readyz", timeout=5).json()["status"] == "ready")
    except (httpx.TransportError, ValueError):
        return False


def wait_until_ready(url: str) -> float:
    """Until /readyz says ready (Redis reachable again); returns when (time.monotonic())."""
    wait_until(lambda: ready(url), timeout=60, interval=0.1)
    return time.monotonic()


def unexplained(outcomes: list[Outcome], down: float, back: float) -> list[Outcome]:
    """Failures other than a read that needs Redis answering 503 while it was away."""
    return [
        o
        for o in failures(outcomes)
        if o.kind != "admin" or o.status != 503 or o.ended < down or o.started > back
    ]


def test_a_killed_redis_comes_back_from_its_append_only_file(
    stack: PartsStack, digits: Digits
) -> None:
    assert stack.audit is not None
    before, reached_before = stack.counters(), stack.audit.rows
    with Traffic(stack.url, digits[0], threads=THREADS, seed=5) as load:
        load.wait_for_answers(ANSWERS)
        killing = time.monotonic()
        stack.redis.kill()
        load.wait_for_answers(ANSWERS)  # served while Redis is gone
        restarting = time.monotonic()
        stack.start_redis()
        forgotten = stack.audit.forget_lost()
        back = wait_until_ready(stack.url)
        load.wait_for_answers(ANSWERS)
    outcomes = load.outcomes
    print(f"Redis SIGKILL: {summary(outcomes)}, down {back - killing:.1f}s")
    assert not unexplained(outcomes, killing, back), unexplained(outcomes, killing, back)[:3]
    assert served([o for o in outcomes if killing < o.started and o.ended < restarting])

    sent = served_rows(outcomes)
    forwarded, dropped = stack.settle(before, sent)
    assert forwarded + dropped == sent
    lost = forwarded - (stack.audit.rows - reached_before)
    just_before = served_rows(
        [o for o in outcomes if killing - AOF_WINDOW_SECONDS <= o.ended <= killing]
    )
    print(f"rows forwarded but not in the restored stream: {lost} (audit had read {forgotten})")
    assert 0 <= lost <= just_before
    stack.assert_consistent()


def follow(url: str, job_id: str, followed: list[object]) -> None:
    """What `mas-stream submit` does after its upload: follow the job to its end."""
    try:
        with ServiceClient(url) as client:
            followed.append(client.wait_for_job(job_id, timeout=60))
    except ServiceError as error:
        followed.append(error)


def test_a_frozen_redis_costs_no_prediction_and_no_row(stack: PartsStack, digits: Digits) -> None:
    assert stack.audit is not None
    job = httpx.get(f"{stack.url}/v1/jobs", timeout=30).json()["jobs"][-1]
    before, reached_before = stack.counters(), stack.audit.rows
    followed: list[object] = []
    follower = threading.Thread(target=follow, args=(stack.url, job["id"], followed))
    with Traffic(stack.url, digits[0], threads=THREADS, seed=6) as load:
        load.wait_for_answers(ANSWERS)
        freezing = time.monotonic()
        with stack.redis.frozen():
            load.wait_for_answers(ANSWERS)
            follower.start()  # its first look at the job gets a 503
            time.sleep(FROZEN_SECONDS)
        back = wait_until_ready(stack.url)
        follower.join(60)
        load.wait_for_answers(ANSWERS)
    outcomes = load.outcomes
    print(f"Redis SIGSTOP: {summary(outcomes)}, frozen {back - freezing:.1f}s")
    assert not unexplained(outcomes, freezing, back), unexplained(outcomes, freezing, back)[:3]
    [finished] = followed
    assert isinstance(finished, Job) and finished.status == "succeeded", finished

    sent = served_rows(outcomes)
    forwarded, dropped = stack.settle(before, sent)
    assert forwarded + dropped == sent
    assert stack.audit.rows - reached_before == forwarded, "a write retried was applied twice"
    stack.assert_consistent()
