"""Preemption is not failure: a worker told to stop (SIGTERM) finishes its shard within the drain time, or gives
it back (lease released, message requeued at the head of its queue, the attempt not counted) so another worker
starts it at once, before the shards queued behind it."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from jobs.settings import Settings
from producer.submit import submit
from producer.watch import wait
from tests.reliability import (
    assert_exactly_once,
    committed_markers,
    first_held_shard,
    starts,
    tokenize_spec,
    wait_drained,
    wait_until,
    worker_logs,
    write_rows,
)
from worker.faults import FAULTS_ENV

DRAIN = 0.5
# From the give-back to the shard's start on an idle worker: at once, i.e. well before the lease (the test
# settings' 10 s) would have run out. How quickly is `bench --tail`'s figure, not a timed assertion here.
RESTART_WITHIN = 5.0


def _ready(log_dir: Path) -> bool:
    return " ready." in worker_logs(log_dir)


def test_a_stopping_worker_gives_its_shard_back_or_finishes_it(tmp_path: Path, settings: Settings,
                                                                start_workers: Any) -> None:
    count = tmp_path / "starts.txt"
    ids = write_rows(tmp_path / "in.parquet", 15)  # three shards: one held, two queued behind it
    stopping = start_workers(1, BATCHFORMERS_DRAIN_SECONDS=str(DRAIN), **{FAULTS_ENV: f"sleep=60,count={count}"})
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", max_retries=0), settings)
    held, _, _ = first_held_shard(settings.broker_url, submission.job_id, started=count)
    other = start_workers(1, BATCHFORMERS_DRAIN_SECONDS="30", **{FAULTS_ENV: f"sleep=2,count={count}"})
    wait_until(lambda: _ready(other.log_dir), 60, "the second worker to be ready")
    # Its first shard (behind the held one) started: its model is loaded, so the given-back shard waits at
    # most for that shard's 2 s before it is the next one taken.
    wait_until(lambda: sum(map(len, starts(count).values())) >= 2, 60, "the second worker's first shard")

    process = stopping.processes[0]
    process.send_signal(signal.SIGTERM)
    stopped_at = time.time()
    status = wait(submission.output, timeout=60)
    assert status.state == "complete", status  # max_retries 0: a counted give-back would have failed it
    runs = starts(count)
    first, second = runs[held]
    assert settings.lease_seconds > DRAIN + RESTART_WITHIN
    assert first < stopped_at < second <= stopped_at + DRAIN + RESTART_WITHIN, (first, stopped_at, second)
    behind = [when for shard, times in runs.items() if shard != held for when in times if when > stopped_at]
    assert behind and all(second < when for when in behind), f"given back to the head of its queue: {runs}"
    assert process.wait(timeout=20) == 0, "the stopping worker exits cleanly once it gave the shard back"
    assert "given back, the worker is stopping" in worker_logs(stopping.log_dir)
    marker = committed_markers(submission.output)[held]
    assert marker["attempt"] == 1, "the given-back start was not counted"
    assert_exactly_once(submission.output, ids)
    wait_drained(settings.broker_url, settings.queue, submission.job_id)
    print(f"\ndrain: shard restarted {second - stopped_at:.2f} s after SIGTERM (drain {DRAIN} s)")

    # Within its drain time the worker finishes the shard itself: one start, committed by it, nothing requeued.
    again = write_rows(tmp_path / "again.parquet", 5)
    second_job = submit(tokenize_spec(tmp_path / "again.parquet", tmp_path / "out-again"), settings)
    first_held_shard(settings.broker_url, second_job.job_id)
    other.processes[0].send_signal(signal.SIGTERM)
    assert other.processes[0].wait(timeout=30) == 0
    assert wait(second_job.output, timeout=10).state == "complete"
    assert len(starts(count)[0]) == (3 if held == 0 else 2), "the second job's shard ran once"
    assert_exactly_once(second_job.output, again)
    wait_drained(settings.broker_url, settings.queue, second_job.job_id)


def test_giving_back_takes_back_one_start_and_never_goes_below_zero(redis_url: str) -> None:
    import uuid

    import redis

    from worker.deliveries import DeliveryCount

    count = DeliveryCount(redis.Redis.from_url(redis_url), f"drain-{uuid.uuid4().hex}", 0)
    assert count.increment() == 1 and count.increment() == 2
    count.give_back()
    assert count.increment() == 2, "the given-back start is not counted"
    count.clear()
    count.give_back()
    assert count.increment() == 1, "no negative count after a give-back without a start"
    count.clear()


def test_the_give_back_signal_interrupts_the_rows_only() -> None:
    import os

    import pytest

    from worker import drain

    previous = signal.signal(drain.GIVE_BACK_SIGNAL, drain._give_back)
    try:
        drain.forbid()
        os.kill(os.getpid(), drain.GIVE_BACK_SIGNAL)  # idle or committing: nothing raised
        drain.allow(0)
        with pytest.raises(drain.ShardGivenBack):
            os.kill(os.getpid(), drain.GIVE_BACK_SIGNAL)
            time.sleep(1)  # the handler runs at the next bytecode; the sleep is interrupted
        os.kill(os.getpid(), drain.GIVE_BACK_SIGNAL)  # a second signal after the give-back: ignored
        assert not issubclass(drain.ShardGivenBack, Exception), "no `except Exception` may swallow it"
    finally:
        drain.forbid()
        signal.signal(drain.GIVE_BACK_SIGNAL, previous)
