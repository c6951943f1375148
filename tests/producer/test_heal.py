"""Self-healing pending shards (issue 14): a lost queue does not lose a job.

Shards that have no commit or failure marker, no message in a queue or in the broker's
unacked hash, and no lease, on two looks at least a lease apart, are re-enqueued once
(a lock per shard and start count), by whichever scanner gets there first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis

from jobs.protocol import JOB_QUEUES_KEY, LEASE_PREFIX, running_key
from jobs.recovery import shard_of
from jobs.settings import Settings
from producer.recovery_watch import Watcher, recovery_for
from producer.submit import submit
from producer.watch import wait
from tests.reliability import (
    assert_completed,
    assert_exactly_once,
    committed_markers,
    in_flight,
    queue_lists,
    queued_messages,
    tokenize_spec,
    wait_drained,
    wait_until,
    worker_logs,
    write_rows,
)
from worker.faults import FAULTS_ENV


def _queued(settings: Settings, job_id: str) -> list[int]:
    """Shards of ``job_id`` with a message in the test's queue (each once per message)."""
    found = [shard_of(json.loads(raw)) for raw in queued_messages(settings.broker_url, settings.queue)]
    return sorted(item[1] for item in found if item and item[0] == job_id)


def _lose_queue(settings: Settings) -> None:
    """Every list of the test's queue and of the job queues routed under it (:mod:`jobs.routing`)."""
    redis.Redis.from_url(settings.broker_url).delete(*queue_lists(settings.broker_url, settings.queue))


def test_a_lost_queue_is_enqueued_again_once(tmp_path: Path, redis_url: str, queue_name: str) -> None:
    """No worker: the queue is deleted; two scanners look; after a lease each shard has one message again."""
    settings = Settings(broker_url=redis_url, queue=queue_name, lease_seconds=1.0)
    write_rows(tmp_path / "in.parquet", 20)
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)
    assert _queued(settings, submission.job_id) == [0, 1, 2, 3]
    scanners = [recovery_for(settings, identity="a"), recovery_for(settings, identity="b")]
    for scanner in scanners:  # all there: nothing to do
        assert not scanner.scan().healed
    _lose_queue(settings)
    healed: dict[str, list[int]] = {}
    deadline = time.monotonic() + 10
    while not healed and time.monotonic() < deadline:
        for scanner in scanners:
            report = scanner.scan()
            healed.update(report.healed)
        time.sleep(0.2)
    assert healed == {submission.job_id: [0, 1, 2, 3]}
    for _ in range(8):  # more looks, past the lock's expiry: the messages are there, nothing is sent again
        for scanner in scanners:
            assert not scanner.scan().healed
        time.sleep(0.5)
    assert _queued(settings, submission.job_id) == [0, 1, 2, 3]
    _lose_queue(settings)
    redis.Redis.from_url(redis_url).hdel(JOB_QUEUES_KEY, submission.job_id)


def test_a_dead_holder_is_taken_over_once(tmp_path: Path, redis_url: str, queue_name: str) -> None:
    """A running entry whose lease is gone (what a SIGKILLed worker leaves) is re-enqueued by one scanner;
    one whose lease is live is left alone."""
    settings = Settings(broker_url=redis_url, queue=queue_name, lease_seconds=1.0)
    write_rows(tmp_path / "in.parquet", 20)
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)
    client = redis.Redis.from_url(redis_url)
    _lose_queue(settings)  # delivered, as it were: the dead worker's messages sit unacked
    running = running_key(submission.job_id)
    client.sadd(running, 1, 2)
    client.set(f"{LEASE_PREFIX}{submission.job_id}:2", "alive/1", px=60_000)
    scanners = [recovery_for(settings, identity="a"), recovery_for(settings, identity="b")]
    reports = [scanner.scan() for scanner in scanners]
    assert [report.taken_over for report in reports].count({submission.job_id: [1]}) == 1
    assert [report.taken_over for report in reports].count({}) == 1
    assert _queued(settings, submission.job_id) == [1]
    assert {int(s) for s in client.smembers(running)} == {2}  # the live one is still running
    _lose_queue(settings)
    client.delete(running, f"{LEASE_PREFIX}{submission.job_id}:2")
    client.hdel(JOB_QUEUES_KEY, submission.job_id)


def test_a_watcher_of_another_queue_leaves_the_job_alone(tmp_path: Path, redis_url: str, queue_name: str) -> None:
    settings = Settings(broker_url=redis_url, queue=queue_name, lease_seconds=0.5)
    write_rows(tmp_path / "in.parquet", 10)
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)
    _lose_queue(settings)
    other = recovery_for(settings.model_copy(update={"queue": f"{queue_name}-other"}))
    for _ in range(4):
        assert not other.scan().healed
        time.sleep(0.3)
    assert _queued(settings, submission.job_id) == []
    watcher = Watcher(settings, submission.output)  # the job's own queue, as `status --watch` does
    wait_until(lambda: watcher.tick() and _queued(settings, submission.job_id) == [0, 1], 10, "the watcher to heal")
    _lose_queue(settings)
    redis.Redis.from_url(redis_url).hdel(JOB_QUEUES_KEY, submission.job_id)


def test_queue_deleted_mid_job_still_finishes_exactly_once(tmp_path: Path, settings: Settings,
                                                           start_workers: Any) -> None:
    """The worker's own scans find the lost shards (the test only reads markers, it does not heal)."""
    lease = 2.0
    ids = write_rows(tmp_path / "in.parquet", 40)
    workers = start_workers(1, BATCHFORMERS_LEASE_SECONDS=str(lease), **{FAULTS_ENV: "sleep=0.3"})
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)
    wait_until(lambda: committed_markers(submission.output), 60, "a first commit")
    _lose_queue(settings)
    lost_at = time.time()
    status = wait(submission.output, timeout=60)  # no settings: this wait does not scan
    assert status.state == "complete", status
    assert_exactly_once(submission.output, ids)
    assert_completed(submission.output, len(ids))
    wait_drained(settings.broker_url, settings.queue, submission.job_id)
    assert in_flight(settings.broker_url, settings.queue) == 0
    assert "the broker lost its queue?" in worker_logs(workers.log_dir)
    print(f"\nqueue deleted mid-job: complete {time.time() - lost_at:.1f}s later (lease {lease}s)")
