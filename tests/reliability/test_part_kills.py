"""One part of the service SIGKILLed under mixed traffic (predict JSON, OIP binary, admin reads),
then started again, as an orchestrator would: the API, the importance worker, the trainer in the
middle of training and in the middle of a publish.

Each test ends with the service consistent (`PartsStack.assert_consistent`): every row the live
API served counted once as forwarded or dropped, Ω equal to a direct computation on the rows the
stream held, no staging directory left under models/.
"""

from __future__ import annotations

import signal
import time

from mas_stream.client import ServiceClient
from tests.reliability.audit import staging_leftovers
from tests.reliability.load import Traffic, failures, served, served_rows, summary
from tests.reliability.parts import PartsStack
from tests.reliability.tasks import Digits, learn, models, shuffled
from tests.support.waiting import wait_until

THREADS = 4
# Answers between the steps of a test, so that each step happens under traffic.
ANSWERS = 150
SAMPLE_BUFFER = 10_000  # MAS_SAMPLE_BUFFER's default: the most rows an API holds unwritten


def kill_holding_entries(stack: PartsStack, tries: int = 500) -> int:
    """SIGKILLs the importance worker while it holds entries it read and has not committed;
    returns how many. It is frozen (SIGSTOP) for the look, so it cannot commit them between the
    look and the kill."""
    assert stack.client is not None
    keys, held = stack.keys, 0
    for _ in range(tries):
        stack.importance.signal(signal.SIGSTOP)
        held = int(stack.client.xpending(keys.samples, keys.importance_group)["pending"])
        if held:
            break
        stack.importance.signal(signal.SIGCONT)
        time.sleep(0.01)
    stack.importance.kill()
    return held


def test_a_killed_api_loses_at_most_its_buffer_and_its_successor_counts_every_row(
    stack: PartsStack, digits: Digits
) -> None:
    assert stack.audit is not None
    before, reached_before = stack.counters(), stack.audit.rows
    with Traffic(stack.url, digits[0], threads=THREADS, seed=1) as load:
        load.wait_for_answers(ANSWERS)
        last = stack.counters()
        killing = time.monotonic()
        stack.api.kill()
        killed = time.monotonic()
        stack.audit.collect()  # the killed process writes no more: this is all it forwarded
        reached = stack.audit.rows - reached_before
        stack.api.start()
        restarted = stack.wait_until_live()
        load.wait_for_answers(ANSWERS)
    outcomes = load.outcomes
    print(f"API SIGKILL: {summary(outcomes)}, down {restarted - killing:.1f}s")

    failed = failures(outcomes)
    assert failed, "no request saw the API down"
    unexplained = [
        o for o in failed if o.status is not None or o.ended < killing or o.started > restarted
    ]
    assert not unexplained, unexplained[:3]  # only "no answer", and only while it was down
    in_flight = sum(o.rows for o in failed if o.started < killed)
    answered_before = served_rows([o for o in outcomes if o.ended <= killed])
    # Nothing it had counted as forwarded is missing, nothing reached the stream twice or
    # from nowhere, and what it lost is what it held in memory.
    assert last[0] - before[0] <= reached <= answered_before + in_flight
    lost = answered_before - reached
    assert lost <= SAMPLE_BUFFER
    print(f"rows answered but never forwarded (the killed API's buffer): {max(lost, 0)}")

    after = served_rows([o for o in outcomes if o.ended > killed])
    forwarded, dropped = stack.settle((0.0, 0.0), after)  # a new process counts from zero
    assert (forwarded + dropped, dropped) == (after, 0)
    assert stack.audit.rows - reached_before - reached == forwarded
    stack.assert_consistent()


def test_a_killed_importance_workers_rows_are_counted_once_by_its_successor(
    stack: PartsStack, digits: Digits
) -> None:
    assert stack.audit is not None and stack.client is not None
    before, reached_before = stack.counters(), stack.audit.rows
    with Traffic(stack.url, digits[0], threads=THREADS, seed=2) as load:
        load.wait_for_answers(ANSWERS)
        held = kill_holding_entries(stack)
        load.wait_for_answers(ANSWERS)  # served while no worker counts
        stack.importance.start()
        load.wait_for_answers(ANSWERS)
    print(f"importance SIGKILL: {summary(load.outcomes)}, holding {held} uncommitted entries")
    assert held > 0, "the kill never caught the worker between a read and its commit"
    assert not failures(load.outcomes), failures(load.outcomes)[:3]
    sent = served_rows(load.outcomes)
    forwarded, dropped = stack.settle(before, sent)
    assert (forwarded + dropped, dropped) == (sent, 0)
    assert stack.audit.rows - reached_before == forwarded
    stack.assert_consistent()


def test_a_trainer_killed_mid_training_leaves_the_served_version_and_fails_its_job(
    stack: PartsStack, digits: Digits
) -> None:
    current, versions = models(stack.url)
    before = stack.counters()
    with (
        Traffic(stack.url, digits[0], threads=THREADS, seed=3) as load,
        ServiceClient(stack.url) as client,
    ):
        job = learn(stack.url, "t1", shuffled(digits, 1), epochs=5000)
        wait_until(lambda: (client.job(job).progress or 0) > 0, timeout=120, interval=0.1)
        stack.trainer.kill()
        load.wait_for_answers(ANSWERS)
        stack.trainer.start()
        record = client.wait_for_job(job, timeout=120)
        load.wait_for_answers(ANSWERS)
    print(f"trainer SIGKILL mid-training: {summary(load.outcomes)}; job: {record.error}")

    assert record.status == "failed" and "stopped while running this job" in str(record.error)
    assert models(stack.url) == (current, versions)
    assert {sample.version for sample in served(load.outcomes)} == {current}
    assert not failures(load.outcomes), failures(load.outcomes)[:3]
    sent = served_rows(load.outcomes)
    forwarded, dropped = stack.settle(before, sent)
    assert (forwarded + dropped, dropped) == (sent, 0)
    stack.assert_consistent()


def test_a_trainer_killed_mid_publish_leaves_nothing_half_written_and_the_next_one_publishes(
    stack: PartsStack, digits: Digits
) -> None:
    current, versions = models(stack.url)
    stall = stack.stall_directory
    stall.mkdir(exist_ok=True)
    before = stack.counters()
    with (
        Traffic(stack.url, digits[0], threads=THREADS, seed=4) as load,
        ServiceClient(stack.url) as client,
    ):
        try:
            (stall / "publish").touch()
            job = learn(stack.url, "t2", shuffled(digits, 2), epochs=2)
            wait_until((stall / "inside").exists, timeout=120, interval=0.05)
            [half_written] = staging_leftovers(stack.models_dir)
            stack.trainer.kill()
        finally:
            (stall / "publish").unlink()  # the trainers started from now on publish in full
        load.wait_for_answers(ANSWERS)
        stack.trainer.start()  # its start removes the dead writer's staging directory
        wait_until(lambda: not staging_leftovers(stack.models_dir), timeout=120, interval=0.1)
        record = client.wait_for_job(job, timeout=120)
        again = client.wait_for_job(learn(stack.url, "t2", shuffled(digits, 2), 2), timeout=180)
        load.wait_for_answers(ANSWERS)
    print(f"trainer SIGKILL mid-publish: {summary(load.outcomes)}; left {half_written}")

    burnt = max(versions) + 1
    assert half_written.startswith(f".v{burnt}.")
    assert record.status == "failed" and "stopped while running this job" in str(record.error)
    assert again.status == "succeeded" and again.result is not None, again
    assert again.result.version == burnt + 1, "the killed publish's number is skipped"
    assert models(stack.url) == (burnt + 1, [*versions, burnt + 1])
    assert {sample.version for sample in served(load.outcomes)} <= {current, burnt + 1}
    assert not failures(load.outcomes), failures(load.outcomes)[:3]
    sent = served_rows(load.outcomes)
    forwarded, dropped = stack.settle(before, sent)
    assert (forwarded + dropped, dropped) == (sent, 0)
    stack.assert_consistent()
