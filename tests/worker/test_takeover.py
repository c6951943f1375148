"""Faster takeover (issue 14): a whole worker SIGKILLed mid-shard is taken over when its lease expires.

Before, nothing but the broker's visibility timeout (2 leases after delivery, plus a restore
sweep) brought such a shard back. Now the other workers' scans (:mod:`jobs.recovery`) see
the running entry without a lease and re-enqueue the shard at once: it restarts within the
dead holder's remaining lease plus one scan interval (lease / 4), still exactly once; the
old unacked message, restored later, finds the shard committed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import redis

from jobs.protocol import lease_key, running_key
from jobs.recovery import SCANS_PER_LEASE
from jobs.settings import Settings
from producer.submit import submit
from producer.watch import wait
from tests.reliability import (
    assert_completed,
    assert_exactly_once,
    committed_markers,
    first_held_shard,
    pools_warm,
    starts,
    tokenize_spec,
    wait_drained,
    wait_until,
    worker_logs,
    worker_number,
    write_rows,
)
from worker.faults import FAULTS_ENV

PICKUP = 2.5  # seconds from the re-enqueue to the shard's start on an idle worker (a loaded machine)


def test_killed_worker_is_taken_over_at_its_lease_end(tmp_path: Path, settings: Settings,
                                                      start_workers: Any) -> None:
    lease = 8.0
    count = tmp_path / "starts.txt"
    ids = write_rows(tmp_path / "in.parquet", 10)
    workers = start_workers(2, BATCHFORMERS_LEASE_SECONDS=str(lease), **{FAULTS_ENV: f"sleep=3,count={count}"})
    # The broker's visibility timeout counts from the delivery, the lease from the shard's start: a message
    # delivered to a pool process still importing torch (seconds on a loaded machine) comes back by the
    # restore sweep as early as the takeover would, and the shard's second run is then no takeover's.
    wait_until(lambda: pools_warm(workers.log_dir, 2), 60, "both pool processes' imports")
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)

    shard, holder, remaining = first_held_shard(settings.broker_url, submission.job_id, started=count)
    victim = workers.processes[worker_number(holder)]
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its pool child: the broker never hears of it
    killed_at = time.time()
    victim.wait()

    status = wait(submission.output, timeout=60)  # no settings: this wait does not scan, the workers do
    assert status.state == "complete", status
    first, second = starts(count)[shard]
    restarted = second - killed_at
    print(f"\nkill -9 takeover: shard restarted {restarted:.1f}s after the kill (lease {lease:.0f}s, "
          f"{remaining:.1f}s of it left at the kill; the visibility timeout would take >= "
          f"{2 * lease - (killed_at - first):.1f}s)")
    assert restarted >= remaining - 0.25, "restarted while the dead holder's lease was live"
    # The visibility timeout could bring it back no sooner than 2 x lease after its delivery (before `first`).
    assert restarted < remaining + lease / SCANS_PER_LEASE + PICKUP < 2 * lease - (killed_at - first)
    assert "took over shard(s)" in worker_logs(workers.log_dir)
    assert_exactly_once(submission.output, ids)
    assert committed_markers(submission.output)[shard]["attempt"] == 2
    assert_completed(submission.output, len(ids))
    wait_drained(settings.broker_url, settings.queue, submission.job_id)  # the dead worker's message came back
    assert len(starts(count)[shard]) == 2  # ... and was a no-op


def test_a_run_that_lost_its_lease_leaves_the_running_entry_to_the_new_holder(tmp_path: Path, settings: Settings,
                                                                             start_workers: Any) -> None:
    """A run whose lease another worker took does not commit, and must not clear the shard's running entry
    either: it is the new holder's, and the takeover scans find a dead holder only there (without it, only
    the slower lost-message scan would ever bring the shard back)."""
    count = tmp_path / "starts.txt"
    ids = write_rows(tmp_path / "in.parquet", 10)
    workers = start_workers(1, BATCHFORMERS_LEASE_SECONDS="4", **{FAULTS_ENV: f"sleep=3,count={count}"})
    wait_until(lambda: pools_warm(workers.log_dir, 1), 60, "the pool process's imports")
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=10), settings)
    shard, _, _ = first_held_shard(settings.broker_url, submission.job_id, started=count)
    client = redis.Redis.from_url(settings.broker_url)
    client.set(lease_key(submission.job_id, shard), "thief/1", px=60_000)  # a live worker took it over

    wait_until(lambda: "'skipped': 'lease lost'" in worker_logs(workers.log_dir), 30, "the robbed run's end")
    assert client.sismember(running_key(submission.job_id), str(shard)), "the new holder's running entry was cleared"
    assert committed_markers(submission.output) == {}
    client.delete(lease_key(submission.job_id, shard))  # ... and died: the worker's scan takes the shard over

    status = wait(submission.output, timeout=60)
    assert status.state == "complete", status
    assert f"took over shard(s) {shard}" in worker_logs(workers.log_dir)
    assert "no message, lease or marker" not in worker_logs(workers.log_dir)
    assert committed_markers(submission.output)[shard]["attempt"] == 2
    assert_exactly_once(submission.output, ids)
    assert len(starts(count)[shard]) == 2
