"""Workers killed inside a shard: the shard runs again elsewhere, within the lease bound, exactly once.

The shards sleep before committing (``BATCHFORMERS_TEST_FAULTS=sleep=S``) so that the
test can kill a worker while it holds a shard's lease, i.e. with the shard's rows
processed but not committed: the worst moment. Last, the benchmarks' stand-in for device time.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.engine.base import RunOptions
from jobs.io.layout import OutputLayout
from jobs.settings import Settings
from producer.submit import submit
from producer.watch import wait
from tests.jobs.test_engine import Toy
from tests.reliability import (
    assert_completed,
    assert_exactly_once,
    committed_markers,
    first_held_shard,
    starts,
    tokenize_spec,
    wait_drained,
    worker_number,
    write_rows,
)
from worker import faults
from worker.faults import FAULTS_ENV


def _pid_of(holder: str) -> int:
    return int(holder.rsplit("/", 1)[1])


@pytest.mark.slow
def test_killed_worker_process_mid_shard(tmp_path: Path, settings: Settings, start_workers: Any) -> None:
    """SIGKILL of the prefork child holding a shard: its worker requeues the message at once, the
    copy waits out the dead child's lease, then runs: no row lost or doubled. The rerun starts once the
    lease has run out (not before: the lease works) and well before a visibility timeout (2 x lease)."""
    lease = 5.0  # a visibility-timeout redelivery could not come before 2 x lease = 10 s
    count = tmp_path / "starts.txt"
    ids = write_rows(tmp_path / "in.parquet", 20)
    workers = start_workers(2, BATCHFORMERS_LEASE_SECONDS=str(lease), **{FAULTS_ENV: f"sleep=2,count={count}"})
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)

    shard, holder, remaining = first_held_shard(settings.broker_url, submission.job_id, started=count)
    os.kill(_pid_of(holder), signal.SIGKILL)
    killed_at = time.time()

    status = wait(submission.output, timeout=90)
    assert status.state == "complete", status
    assert_exactly_once(submission.output, ids)
    markers = committed_markers(submission.output)
    assert markers[shard]["attempt"] == 2  # it did run again
    assert all(marker["attempt"] == 1 for index, marker in markers.items() if index != shard)
    runs = starts(count)
    assert len(runs[shard]) == 2 and all(len(runs[index]) == 1 for index in markers if index != shard)
    restarted = runs[shard][1] - killed_at
    assert restarted >= remaining - 0.25, "the copy ran while the dead holder's lease was still live"
    assert restarted < lease + 3.5, "not taken over at the lease's end: a visibility-timeout redelivery?"
    assert_completed(submission.output, len(ids))
    assert all(process.poll() is None for process in workers.processes)  # the worker replaced its child


@pytest.mark.slow
def test_killed_worker_mid_shard(tmp_path: Path, settings: Settings, start_workers: Any) -> None:
    """SIGKILL of a whole worker (its main process and pool child): Redis never hears of it,
    so the shard comes back through the visibility timeout (2 x lease) and runs on the other worker."""
    lease = 2.5
    count = tmp_path / "starts.txt"
    ids = write_rows(tmp_path / "in.parquet", 10)
    workers = start_workers(2, BATCHFORMERS_LEASE_SECONDS=str(lease), **{FAULTS_ENV: f"sleep=2,count={count}"})
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)

    shard, holder, _ = first_held_shard(settings.broker_url, submission.job_id, started=count)
    victim = workers.processes[worker_number(holder)]
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its pool child
    victim.wait()

    status = wait(submission.output, timeout=90)
    assert status.state == "complete", status
    assert_exactly_once(submission.output, ids)
    markers = committed_markers(submission.output)
    assert markers[shard]["attempt"] == 2
    first, second = starts(count)[shard]
    # Delivered before its first start, so back within 2 x lease + a restore sweep (every lease / 2)
    # of it, plus picking it up: far from Redis's default hour.
    assert second - first < 2 * lease + lease / 2 + 1.5
    assert_completed(submission.output, len(ids))


@pytest.mark.slow
def test_shard_longer_than_visibility_timeout_runs_once(tmp_path: Path, settings: Settings,
                                                        start_workers: Any) -> None:
    """A live shard running past 2 x lease is redelivered to the idle worker, which waits on the lease:
    the shard starts once (counted by the test, not the code), never twice at once."""
    lease = 2.0
    count = tmp_path / "starts.txt"
    ids = write_rows(tmp_path / "in.parquet", 5)
    start_workers(2, BATCHFORMERS_LEASE_SECONDS=str(lease), **{FAULTS_ENV: f"sleep=7,count={count}"})
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)

    status = wait(submission.output, timeout=90)
    assert status.state == "complete", status
    wait_drained(settings.broker_url, settings.queue, submission.job_id)  # the redelivered copy is done too
    assert_exactly_once(submission.output, ids)
    assert len(starts(count)[0]) == 1  # started once: never ran twice
    assert committed_markers(submission.output)[0]["attempt"] == 1
    assert_completed(submission.output, len(ids))


def test_success_marker_is_written_once_by_concurrent_finishers(tmp_path: Path) -> None:
    """Shards finishing together: every finisher sees all shards committed, exactly one writes _SUCCESS."""
    import pyarrow as pa

    from jobs.io.completion import complete_if_last
    from producer.submit import prepare

    write_rows(tmp_path / "in.parquet", 20)
    manifest, layout = prepare(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), Settings())
    for plan in manifest.shards:
        layout.commit(plan.index, pa.table({"x": [1]}), {"rows": plan.rows, "errors": 0, "seconds": 0.1})
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(8)
    wrote = context.Queue()

    def finisher() -> None:
        barrier.wait()
        wrote.put(complete_if_last(OutputLayout(str(tmp_path / "out")), manifest))

    processes = [context.Process(target=finisher) for _ in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=30)
    assert [wrote.get(timeout=5) for _ in processes].count(True) == 1
    completion = layout.completion()
    assert completion is not None and completion["rows"] == 20


@pytest.mark.parametrize("overlap", [False, True])
def test_device_seconds_sleep_per_padded_token_from_a_shard_start(monkeypatch: pytest.MonkeyPatch,
                                                                   overlap: bool) -> None:
    """``device-seconds=S`` (bench/host.py's stand-in for device time) slows every model batch by S per padded
    token once a shard starts, with overlap on or off; ``simulate_device_time(0)`` ends it."""
    runner = Toy(options=RunOptions(batch_size=1, overlap=overlap, encode_rows=1))
    texts = ["a b c d"] * 5  # five batches of four padded tokens: 0.4 s at 0.02 s a token
    runner.run_table({"text": texts})  # warm-up: the engine imports torch on its first run
    monkeypatch.setenv(FAULTS_ENV, "device-seconds=0.02")
    faults.started(0)
    try:
        started = time.perf_counter()
        slowed = runner.run_table({"text": texts}).table
        assert time.perf_counter() - started >= 0.4
    finally:
        faults.simulate_device_time(0.0)
    started = time.perf_counter()
    assert runner.run_table({"text": texts}).table.equals(slowed)  # only slower, never different
    assert time.perf_counter() - started < 0.3
