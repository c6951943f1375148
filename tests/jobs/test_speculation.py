"""Stragglers' copies, in process on a real Redis and real Parquet: when a copy is sent, and a copy racing
its holder commits the shard once (jobs.speculation, run_and_commit(copy=True))."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs import routing
from jobs.errors import ModelLoadError
from jobs.io.layout import OutputLayout
from jobs.ledger import Ledger, job_keys
from jobs.manifest import Manifest
from jobs.protocol import COPIES_PREFIX, COPY_PREFIX, SINCE_PREFIX, copy_lease_key, lease_key
from jobs.settings import Settings
from jobs.shard import Hooks, run_and_commit
from jobs.speculation import Speculation, copies, started
from producer.submit import prepare
from tests.reliability import assert_exactly_once, tokenize_spec, write_rows
from worker.deliveries import DeliveryCount
from worker.lease import ShardLease
from worker.runners import runner_for

SHARDS, SHARD_ROWS = 3, 4


@pytest.fixture
def job(tmp_path: Path, settings: Settings, client: redis.Redis) -> Iterator[tuple[Manifest, OutputLayout, list[str]]]:
    ids = write_rows(tmp_path / "in.parquet", SHARDS * SHARD_ROWS)
    spec = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=SHARD_ROWS, max_retries=0)
    manifest, layout = prepare(spec, settings)
    Ledger.for_manifest(client, manifest, retention=60).rebuild([])
    yield manifest, layout, ids
    job_id = manifest.job_id
    client.delete(*job_keys(job_id), SINCE_PREFIX + job_id, COPIES_PREFIX + job_id)
    for shard in range(SHARDS):
        counts = DeliveryCount(client, job_id, shard)
        client.delete(counts.key, counts.error_key, lease_key(job_id, shard), copy_lease_key(job_id, shard),
                      f"{COPY_PREFIX}{job_id}:{shard}")


def _attempt(job: Any, client: redis.Redis, settings: Settings, shard: int, holder: str, *, copy: bool = False,
             load: Any = runner_for, hooks: Hooks | None = None, piece_rows: int = 0) -> dict[str, Any]:
    manifest, layout, _ = job
    key = copy_lease_key(manifest.job_id, shard) if copy else None
    lease = ShardLease(client, manifest.job_id, shard, holder, 30.0, key=key)
    assert lease.acquire()
    tuned = settings.model_copy(update={"piece_rows": piece_rows, "piece_seconds": 1e-6})
    try:
        return run_and_commit(manifest, shard, layout, lease, DeliveryCount(client, manifest.job_id, shard),
                              Ledger.for_manifest(client, manifest, retention=60), tuned, load, hooks=hooks, copy=copy)
    finally:
        lease.release()


class Sent:
    def __init__(self) -> None:
        self.shards: list[set[int]] = []

    def __call__(self, manifest: Any, layout: Any, shards: set[int], queue: str) -> int:
        self.shards.append(set(shards))
        return len(shards)


def test_a_straggler_gets_one_copy_once_the_queue_is_empty(job: Any, client: redis.Redis, settings: Settings) -> None:
    manifest, layout, _ = job
    sent, idle = Sent(), [True]
    speculation = Speculation(client, sent, min_seconds=5.0, idle=lambda: idle[0])
    for shard in (0, 1):
        _attempt(job, client, settings, shard, "a/1")
    Ledger.for_manifest(client, manifest).started(2)
    started(client, manifest.job_id, 2, now=100.0)
    assert speculation.check(manifest, layout, settings.queue, now=104.0) == []  # under the minimum: not late
    idle[0] = False
    assert speculation.check(manifest, layout, settings.queue, now=200.0) == []  # this worker is busy
    idle[0] = True
    queued = routing.queue_keys(routing.job_queue(settings.queue, manifest.job_id))[0]
    client.lpush(queued, b"a message")
    try:
        assert speculation.check(manifest, layout, settings.queue, now=200.0) == []  # shards still wait
    finally:
        client.delete(queued)
    assert speculation.check(manifest, layout, settings.queue, now=200.0) == [2]
    assert speculation.check(manifest, layout, settings.queue, now=300.0) == []  # one copy per shard
    assert sent.shards == [{2}] and copies(client, manifest.job_id) == 1


def test_a_copy_that_commits_first_wins_and_its_holder_commits_nothing(job: Any, client: redis.Redis,
                                                                        settings: Settings) -> None:
    manifest, layout, ids = job
    for shard in (0, 1):
        _attempt(job, client, settings, shard, "a/1")
    copied: list[dict[str, Any]] = []

    def copy_overtakes(shard: int) -> None:  # the holder is about to commit its first piece
        if not copied:
            copied.append(_attempt(job, client, settings, 2, "b/1", copy=True, piece_rows=1))

    result = _attempt(job, client, settings, 2, "a/1", piece_rows=1, hooks=Hooks(before_piece=copy_overtakes))
    assert result == {"shard": 2, "skipped": "already committed"}
    assert copied[0]["copy"] is True and copied[0]["rows"] == SHARD_ROWS and copied[0]["attempt"] == 0
    assert_exactly_once(layout.location, ids)
    tally = Ledger.for_manifest(client, manifest).read()
    assert tally is not None and tally.rows == SHARDS * SHARD_ROWS and tally.committed == {0, 1, 2}
    assert layout.completion()["rows"] == SHARDS * SHARD_ROWS  # type: ignore[index]


def test_a_failing_copy_never_fails_the_shard(job: Any, client: redis.Redis, settings: Settings) -> None:
    manifest, layout, _ = job

    def broken(*_: Any) -> Any:
        raise ModelLoadError("no such model")

    result = _attempt(job, client, settings, 0, "b/1", copy=True, load=broken)
    assert result == {"shard": 0, "skipped": "copy failed: no such model"} and layout.read_failed([0]) == {}
    assert client.get(DeliveryCount(client, manifest.job_id, 0).key) is None  # no attempt counted
