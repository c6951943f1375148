"""What a shard costs beyond its model: the ledger's first commit, the running set, the counting bench.

In process against a real Redis: a job's first commit creates its ledger without warning that one
was lost (only other shards' markers mean that); a counted commit leaves the running set by itself
(the worker's task no longer removes it again); the per-shard overhead bench counts round trips
(a pipeline or a script is one) and commands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis

from bench.overhead import counting_round_trips, measure_overhead
from jobs.io.completion import complete_if_last
from jobs.io.layout import OutputLayout
from jobs.ledger import Ledger, job_keys
from jobs.manifest import Manifest
from jobs.settings import Settings
from producer.submit import prepare
from tests.reliability import tokenize_spec, write_rows


@pytest.fixture
def job(tmp_path: Path, settings: Settings, client: redis.Redis) -> Iterator[tuple[Manifest, OutputLayout, Ledger]]:
    """A prepared (not enqueued) job of 3 one-row shards, with no ledger yet."""
    write_rows(tmp_path / "in.parquet", 3)
    manifest, layout = prepare(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=1), settings)
    yield manifest, layout, Ledger.for_manifest(client, manifest, retention=60)
    client.delete(*job_keys(manifest.job_id))


def _commit(layout: OutputLayout, shard: int) -> dict[str, Any]:
    summary = {"rows": 1, "errors": 0, "seconds": 0.1}
    layout.commit(shard, pa.table({"row_index": [shard]}), summary)
    return {**summary, "committed_at": time.time()}


def _lost_ledger_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "jobs.io.completion"]


def test_a_first_commit_creates_the_ledger_without_a_warning(job: tuple[Manifest, OutputLayout, Ledger],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    manifest, layout, ledger = job
    caplog.set_level(logging.INFO, logger="jobs.io.completion")
    assert complete_if_last(layout, manifest, 0, _commit(layout, 0), ledger) is False
    assert not _lost_ledger_warnings(caplog)
    tally = ledger.read()
    assert tally is not None and tally.committed == {0} and tally.unread == set() and tally.rows == 1


def test_a_ledger_lost_after_commits_is_rebuilt_with_a_warning(job: tuple[Manifest, OutputLayout, Ledger],
                                                               client: redis.Redis,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    manifest, layout, ledger = job
    complete_if_last(layout, manifest, 0, _commit(layout, 0), ledger)
    client.delete(*job_keys(manifest.job_id))  # Redis lost it
    caplog.set_level(logging.INFO, logger="jobs.io.completion")
    caplog.clear()
    assert complete_if_last(layout, manifest, 1, _commit(layout, 1), ledger) is False
    assert len(_lost_ledger_warnings(caplog)) == 1
    tally = ledger.read()
    assert tally is not None and tally.committed == {0, 1} and tally.unread == {0}


def test_a_counted_commit_leaves_the_running_set(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    """The worker's task relies on this: after a counted commit it does not remove the shard again."""
    manifest, layout, ledger = job
    ledger.rebuild([])
    ledger.started(2)
    ledger.started(1)
    complete_if_last(layout, manifest, 2, _commit(layout, 2), ledger)
    tally = ledger.read()
    assert tally is not None and tally.running == {1}


def test_round_trips_are_counted_per_request(client: redis.Redis) -> None:
    key = f"test-overhead-{time.time_ns()}"
    client.ping()  # connected: the handshake's own requests are not counted below
    with counting_round_trips() as trips:
        client.set(key, 1)
        pipe = client.pipeline()
        pipe.incr(key)
        pipe.expire(key, 10)
        pipe.execute()
        client.eval("return redis.call('GET', KEYS[1])", 1, key)
    assert trips["count"] == 3
    client.set(key, 2)
    assert trips["count"] == 3  # counting stopped with the block
    client.delete(key)


@pytest.mark.slow
def test_the_overhead_bench_counts_each_shards_requests(tmp_path: Path) -> None:
    result = measure_overhead(shards=4, rows_per_shard=1, workdir=tmp_path)
    assert result["complete"] and result["shards"] == 4
    # lease, ledger, delivery count and commit: every shard talks to Redis, and scripts run there
    assert result["round_trips"] >= 5 and result["commands"] >= result["round_trips"]
    assert result["commands_by_name"].get("eval", 0) >= 3 and "info" not in result["commands_by_name"]
    assert result["overhead_ms"] > 0 and result["overhead_cpu_ms"] > 0
