"""Stragglers (issue 24): once a job's queue is empty, an idle worker copies a shard that runs far longer
than the job's others; the first commit wins, every row once. Off, nothing is copied."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from jobs.settings import Settings
from producer.status import job_status
from producer.submit import submit
from producer.watch import wait
from tests.reliability import (
    assert_completed,
    assert_exactly_once,
    committed_markers,
    first_held_shard,
    tokenize_spec,
    worker_logs,
    write_rows,
)
from worker.faults import FAULTS_ENV

SHARDS, SHARD_ROWS, PIECE_ROWS = 3, 6, 2
STEP_SLEEP = 5.0  # the slow worker: each step of 2 rows takes 5 s more, its shard >= 15 s (the others ~0.1 s)
ENV = {"BATCHFORMERS_LEASE_SECONDS": "4", "BATCHFORMERS_PIECE_ROWS": str(PIECE_ROWS),
       "BATCHFORMERS_PIECE_SECONDS": "0.5", "BATCHFORMERS_SPECULATE_AFTER_SECONDS": "1"}


def _run(tmp_path: Path, settings: Settings, start_workers: Any,
         speculate: bool) -> tuple[Any, int, float, float, Any]:
    """A job whose first shard lands on a slowed worker, then a normal worker joins; (submission, that
    shard, when it started, when the job completed, the normal worker)."""
    ids = write_rows(tmp_path / "in.parquet", SHARDS * SHARD_ROWS)
    env = {**ENV, "BATCHFORMERS_SPECULATE": "1" if speculate else "0"}
    start_workers(1, **env, **{FAULTS_ENV: f"step-sleep={STEP_SLEEP}"})  # a slow machine
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=SHARD_ROWS), settings)
    shard, _, _ = first_held_shard(settings.broker_url, submission.job_id)
    slow_started = time.time()
    fast = start_workers(1, **env)
    status = wait(submission.output, timeout=90)
    assert status.state == "complete", status
    assert_exactly_once(submission.output, ids)
    assert_completed(submission.output, len(ids))
    return submission, shard, slow_started, time.time(), fast


@pytest.mark.slow
def test_an_idle_worker_copies_a_straggler_and_the_first_commit_wins(tmp_path: Path, settings: Settings,
                                                                     start_workers: Any) -> None:
    submission, shard, slow_started, done, fast = _run(tmp_path, settings, start_workers, speculate=True)
    alone = (SHARD_ROWS // PIECE_ROWS) * STEP_SLEEP
    print(f"\nspeculation: job complete {done - slow_started:.1f}s after its slowed shard started "
          f"(that shard alone takes >= {alone:.0f}s)")
    assert done - slow_started < alone, "the job waited for its straggler"
    marker = committed_markers(submission.output)[shard]
    assert marker.get("copy") is True and marker["rows"] == SHARD_ROWS, marker
    assert "started a copy" in worker_logs(fast.log_dir)
    final = job_status(submission.output, settings)
    assert final.copies == 1 and final.rows_done == SHARDS * SHARD_ROWS and final.committed == SHARDS


@pytest.mark.slow
def test_no_copy_when_speculation_is_off(tmp_path: Path, settings: Settings, start_workers: Any) -> None:
    submission, shard, slow_started, done, fast = _run(tmp_path, settings, start_workers, speculate=False)
    assert done - slow_started >= (SHARD_ROWS // PIECE_ROWS) * STEP_SLEEP - 1
    assert "copy" not in committed_markers(submission.output)[shard]
    assert job_status(submission.output, settings).copies == 0
    assert "started a copy" not in worker_logs(fast.log_dir)
