"""Poison shards (always crash or fail their worker) and shards past their time limit:
retried a bounded number of times, then marked failed with their last error; the rest completes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.dispatch import time_limits
from jobs.errors import InputError, ModelLoadError, OutputError, RetryableError, SpecError
from jobs.io.layout import OutputLayout
from jobs.protocol import DELIVERIES_PREFIX
from jobs.settings import Settings
from jobs.shard import is_permanent
from producer.submit import submit
from producer.watch import wait
from tests.reliability import (
    committed_markers,
    queue_lists,
    queued_messages,
    read_back,
    starts,
    tokenize_spec,
    wait_drained,
    write_rows,
)
from worker.faults import FAULTS_ENV


@pytest.mark.slow
def test_poison_shards_are_marked_failed_and_the_rest_completes(tmp_path: Path, settings: Settings,
                                                                 start_workers: Any) -> None:
    ids = write_rows(tmp_path / "in.parquet", 20)
    count = tmp_path / "starts.txt"
    # Shard 1 SIGKILLs the process running it, shard 2 raises, every shard takes a second. The lease is short,
    # for the killed shard's next start, but not so short that a healthy shard's heartbeat starved for 2 s on a
    # loaded machine lets a takeover start it again (three starts of a healthy shard fail it like a poison one).
    start_workers(2, BATCHFORMERS_LEASE_SECONDS="4", **{FAULTS_ENV: f"sleep=1,kill=1,raise=2,count={count}"})
    max_retries = 1
    poisoned = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", max_retries=max_retries), settings)
    # A second job on the same workers, whose only shard overruns its 0.5 s time limit.
    slow = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "slow", shard_rows=20, max_retries=0,
                                shard_time_limit=0.5), settings)

    status = wait(poisoned.output, timeout=120)
    seen = f"failures {status.failures}, starts {starts(count)}"  # what a failure here needs to be explained
    assert status.state == "failed" and status.committed == 2 and status.failed == 2, seen
    assert status.failures[1].startswith("gave up after 2 attempts; last: the worker running this shard "
                                         "was lost (killed, out of memory or crashed)")
    assert status.failures[2] == (
        f"gave up after 2 attempts; last: InjectedFault: injected failure of shard 2 ({FAULTS_ENV})")
    failed = OutputLayout(poisoned.output).failed()
    assert failed[1]["attempts"] == 2 and failed[2]["attempts"] == 2
    # The healthy shards are complete, once each; the poison shards wrote nothing visible.
    table = read_back(poisoned.output)
    assert sorted(table.column("id").to_pylist()) == sorted(ids[0:5] + ids[15:20])
    assert set(committed_markers(poisoned.output)) == {0, 3}
    # Every copy of every message is done: nothing queued, delivered or leased. Then count the runs
    # (the test's own file, one line per start): exactly 1 + max_retries for each poison shard. Redis
    # counted at least one delivery more (the one that found the runs used up and gave up; a loaded
    # machine may see a visibility-timeout copy too), and none of those ran the shard.
    wait_drained(settings.broker_url, settings.queue, poisoned.job_id)
    runs = {shard: len(times) for shard, times in starts(count).items()}
    assert runs[1] == runs[2] == 1 + max_retries == 2
    client = redis.Redis.from_url(settings.broker_url)
    assert int(client.get(f"{DELIVERIES_PREFIX}{poisoned.job_id}:1") or 0) >= 1 + max_retries + 1

    status = wait(slow.output, timeout=60)
    assert status.state == "failed"
    assert status.failures[0] == ("gave up after 1 attempt; last: the shard ran past its time limit; "
                                  "raise shard_time_limit or lower shard_rows")
    assert OutputLayout(slow.output).failed()[0]["attempts"] == 1
    wait_drained(settings.broker_url, settings.queue, slow.job_id)
    runs = {shard: len(times) for shard, times in starts(count).items()}
    assert runs == {0: 2, 1: 2, 2: 2, 3: 1}  # shard 0 of each job once, shard 3 once, the poison ones twice


@pytest.mark.slow
def test_a_shard_past_its_hard_time_limit_is_requeued_and_counted(tmp_path: Path, settings: Settings,
                                                                  start_workers: Any) -> None:
    """A shard deaf to the soft limit is killed at the hard one; its message is not dropped (the job
    would hang) but requeued, and the delivery count ends it like any crash."""
    write_rows(tmp_path / "in.parquet", 10)
    start_workers(1, BATCHFORMERS_LEASE_SECONDS="2", **{FAULTS_ENV: "hang=1"})
    warm_up = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "warm", shard_rows=10), settings)
    assert wait(warm_up.output, timeout=60).state == "complete"  # the model is loaded: limits count from here
    spec = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", max_retries=0, shard_time_limit=0.5)
    assert time_limits(spec, settings) == (0.5, 5.5)
    status = wait(submit(spec, settings).output, timeout=60)
    assert status.state == "failed" and status.committed == 1
    assert status.failures[1].startswith("gave up after 1 attempt; last: the worker running this shard was lost")


def _caused_by(error: Exception, cause: BaseException) -> Exception:
    try:
        raise error from cause
    except Exception as raised:
        return raised


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (SpecError("trust_remote_code", "not allowed"), True),
        (_caused_by(InputError("cannot read rows 0-5 of x.parquet"), FileNotFoundError("x.parquet")), True),
        (_caused_by(InputError("cannot read rows 0-5 of s3://b/x.parquet"), ConnectionResetError()), False),
        (_caused_by(ModelLoadError("cannot load model 'x'"), OSError("x is not a model identifier")), True),
        (_caused_by(ModelLoadError("cannot load model 'x'"), TimeoutError("hub")), False),
        (OutputError("no manifest"), True),
        (RetryableError("flaky"), False),
        (RuntimeError("CUDA error: unspecified launch failure"), False),
    ],
)
def test_permanent_and_transient_errors(error: Exception, permanent: bool) -> None:
    """Permanent errors fail a shard at its first attempt; transient ones are retried."""
    assert is_permanent(error) is permanent


def test_tasks_carry_their_time_limits(tmp_path: Path, settings: Settings) -> None:
    write_rows(tmp_path / "in.parquet", 10)
    spec = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_time_limit=100)
    submit(spec, settings)
    client = redis.Redis.from_url(settings.broker_url)
    messages = [json.loads(raw) for raw in queued_messages(settings.broker_url, settings.queue)]
    client.delete(*queue_lists(settings.broker_url, settings.queue))
    assert len(messages) == 2
    soft, hard = time_limits(spec, settings)
    assert (soft, hard) == (100, 110)
    assert all(message["headers"]["timelimit"] == [hard, soft] for message in messages)
    default = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out")
    assert time_limits(default, Settings(shard_time_limit=600))[0] == 600
