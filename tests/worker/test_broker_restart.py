"""The broker restarts in the middle of a job: workers and ``run`` reconnect, every row comes out once."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from producer.embedded import EmbeddedRedis, LocalWorkers
from producer.run import run
from producer.status import JobStatus, job_status
from tests.reliability import (
    assert_completed,
    assert_exactly_once,
    committed_markers,
    tokenize_spec,
    wait_until,
    write_rows,
)
from worker.faults import FAULTS_ENV

pytestmark = pytest.mark.slow
OUTAGE_SECONDS = 3.5  # a lease (3 s) and then some


def test_job_survives_a_broker_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis stops (keeping its append-only file) while shards run and others wait, then comes back."""
    ids = write_rows(tmp_path / "in.parquet", 40)
    spec = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out")  # 8 shards
    env = {"BATCHFORMERS_LEASE_SECONDS": "3", "BATCHFORMERS_TORCH_THREADS": "1", FAULTS_ENV: "sleep=1"}
    with EmbeddedRedis(persist=True) as broker, \
            LocalWorkers(broker.url, count=2, queue="restart", log_dir=str(tmp_path / "logs"), extra_env=env):
        result: dict[str, Any] = {}

        def producer() -> None:
            try:
                result["status"] = run(spec, broker_url=broker.url, progress=False, timeout=150)
            except BaseException as exc:  # reported by the assertion below
                result["error"] = exc

        monkeypatch.setenv("BATCHFORMERS_QUEUE", "restart")
        thread = threading.Thread(target=producer, daemon=True)
        thread.start()
        wait_until(lambda: committed_markers(spec.output), 60, "a first shard to commit")
        broker.stop(keep_data=True)  # mid-job: shards running, others queued, the run waiting
        at_stop = len(committed_markers(spec.output))
        assert at_stop < 8  # the job really was in the middle
        # The outage itself (a scenario, not a wait for a condition): longer than a lease, so every
        # lease refresh, delivery count and progress update of the running shards meets a dead broker.
        time.sleep(OUTAGE_SECONDS)
        broker.start()  # same port, same append-only file
        thread.join(timeout=170)
        assert not thread.is_alive() and "error" not in result, result
        status: JobStatus = result["status"]
        assert status.state == "complete", status
        assert status.committed == 8
    assert_exactly_once(spec.output, ids)
    assert job_status(spec.output).rows_done == 40
    assert_completed(spec.output, 40)
