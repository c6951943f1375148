"""Workers killed inside a shard: the shard runs again elsewhere, within the lease bound, exactly once.

The shards sleep before committing (``BATCHFORMERS_TEST_FAULTS=sleep=S``) so that the
test can kill a worker while it holds a shard's lease, i.e. with the shard's rows
processed but not committed: the worst moment.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.layout import OutputLayout
from jobs.settings import Settings
from producer.status import wait
from producer.submit import submit
from tests.reliability import (
    assert_exactly_once,
    committed_markers,
    completions_logged,
    lease_holders,
    tokenize_spec,
    wait_until,
    worker_logs,
    write_rows,
)
from worker.faults import FAULTS_ENV

pytestmark = pytest.mark.slow


def _pid_of(holder: str) -> int:
    return int(holder.rsplit("/", 1)[1])


def _worker_number(holder: str) -> int:
    return int(holder.split("-", 1)[0].removeprefix("local"))


def test_killed_worker_process_mid_shard(tmp_path: Path, settings: Settings, start_workers: Any) -> None:
    """SIGKILL of the prefork child holding a shard: retaken within the lease, no row lost or doubled."""
    lease = 3.0
    ids = write_rows(tmp_path / "in.parquet", 20)
    workers = start_workers(2, BATCHFORMERS_LEASE_SECONDS=str(lease), **{FAULTS_ENV: "sleep=2"})
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)

    holders = wait_until(lambda: lease_holders(settings.broker_url, submission.job_id), 60, "a lease")
    shard, holder = next(iter(holders.items()))
    os.kill(_pid_of(holder), signal.SIGKILL)
    killed_at = time.time()

    status = wait(submission.output, timeout=90)
    assert status.state == "complete", status
    assert_exactly_once(submission.output, ids)
    markers = committed_markers(submission.output)
    assert markers[shard]["attempt"] == 2  # it did run again
    # Retaken once the dead holder's lease expired, not after a visibility timeout.
    assert markers[shard]["committed_at"] - killed_at < lease + 2 + 15
    assert all(marker["attempt"] == 1 for index, marker in markers.items() if index != shard)
    assert completions_logged(workers.log_dir, submission.job_id) == 1
    assert all(process.poll() is None for process in workers.processes)  # the worker replaced its child


def test_killed_worker_mid_shard(tmp_path: Path, settings: Settings, start_workers: Any) -> None:
    """SIGKILL of a whole worker (its main process and pool child): Redis never hears of it,
    so the shard comes back through the visibility timeout (2 x lease) and runs on the other worker."""
    lease = 2.5
    ids = write_rows(tmp_path / "in.parquet", 10)
    workers = start_workers(2, BATCHFORMERS_LEASE_SECONDS=str(lease), **{FAULTS_ENV: "sleep=2"})
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)

    holders = wait_until(lambda: lease_holders(settings.broker_url, submission.job_id), 60, "a lease")
    shard, holder = next(iter(holders.items()))
    victim = workers.processes[_worker_number(holder)]
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its pool child
    victim.wait()
    killed_at = time.time()

    status = wait(submission.output, timeout=90)
    assert status.state == "complete", status
    assert_exactly_once(submission.output, ids)
    markers = committed_markers(submission.output)
    assert markers[shard]["attempt"] == 2
    # Back within 2 x lease + a restore sweep, plus the rerun itself: far from Redis's default hour.
    assert markers[shard]["committed_at"] - killed_at < 2 * lease + lease / 2 + 2 + 15
    assert completions_logged(workers.log_dir, submission.job_id) == 1


def test_shard_longer_than_visibility_timeout_runs_once(tmp_path: Path, settings: Settings,
                                                        start_workers: Any) -> None:
    """A live shard running past 2 x lease is redelivered to the idle worker, which waits on the lease."""
    lease = 2.0
    ids = write_rows(tmp_path / "in.parquet", 5)
    workers = start_workers(2, BATCHFORMERS_LEASE_SECONDS=str(lease), **{FAULTS_ENV: "sleep=7"})
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)

    status = wait(submission.output, timeout=90)
    assert status.state == "complete", status
    assert_exactly_once(submission.output, ids)
    assert committed_markers(submission.output)[0]["attempt"] == 1  # started once: never ran twice
    logs = worker_logs(workers.log_dir)
    assert "shard 0 of job" in logs and "is running on" in logs  # the redelivered copy saw the lease
    assert "attempt 2" not in logs  # ... and did not start the shard a second time


def test_success_marker_is_written_once_by_concurrent_finishers(tmp_path: Path) -> None:
    """Shards finishing together: every finisher sees all shards committed, exactly one writes _SUCCESS."""
    import pyarrow as pa

    from producer.submit import prepare
    from worker.tasks import _complete_if_last

    write_rows(tmp_path / "in.parquet", 20)
    manifest, layout = prepare(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), Settings())
    for plan in manifest.shards:
        layout.commit(plan.index, pa.table({"x": [1]}), {"rows": plan.rows, "errors": 0, "seconds": 0.1})
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(8)
    wrote = context.Queue()

    def finisher() -> None:
        barrier.wait()
        wrote.put(_complete_if_last(OutputLayout(str(tmp_path / "out")), manifest))

    processes = [context.Process(target=finisher) for _ in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=30)
    assert [wrote.get(timeout=5) for _ in processes].count(True) == 1
    completion = layout.completion()
    assert completion is not None and completion["rows"] == 20
