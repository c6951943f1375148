"""A shard's cost does not grow with the number of shards: completion and status from the ledger.

These tests run in process against a real Redis and count what touches the output:
a commit reads no marker, the one that completes the job lists their names once, a
status refresh reads none; a ledger that Redis lost is rebuilt from the marker names
without reading them, and a ledger of an earlier submission is never trusted. The
slow test deletes the ledger in the middle of a real job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from jobs.io.completion import complete_if_last
from jobs.io.layout import OutputLayout
from jobs.io.sources import discover, schema_of
from jobs.io.storage import Storage
from jobs.ledger import Ledger, job_keys
from jobs.manifest import Manifest
from jobs.settings import Settings
from producer.job_index import known_jobs, remember
from producer.plan import build_manifest
from producer.status import job_status
from producer.status_counts import MarkerCache
from producer.submit import prepare, submit
from producer.watch import wait
from tests.reliability import (
    assert_exactly_once,
    completions_logged,
    tokenize_spec,
    wait_until,
    worker_logs,
    write_rows,
)
from worker.faults import FAULTS_ENV

SHARDS = 24


class CountingStorage:
    """Counts the reads and listings under one layout's location (every Storage is patched)."""

    def __init__(self, layout: OutputLayout, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[str] = []
        self.listings = 0
        root = layout.storage.root
        read, listing = Storage.read_bytes, Storage.list

        def counted_read(storage: Storage, *parts: str) -> bytes:
            if storage.root == root:
                self.reads.append("/".join(parts))
            return read(storage, *parts)

        def counted_list(storage: Storage, *parts: str) -> list[str]:
            if storage.root == root:
                self.listings += 1
            return listing(storage, *parts)

        monkeypatch.setattr(Storage, "read_bytes", counted_read)
        monkeypatch.setattr(Storage, "list", counted_list)

    def markers_read(self) -> int:
        return sum(1 for name in self.reads if "/shards/" in name)

    def reset(self) -> None:
        self.reads.clear()
        self.listings = 0


@pytest.fixture
def job(tmp_path: Path, settings: Settings, client: redis.Redis) -> Iterator[tuple[Manifest, OutputLayout]]:
    """A prepared (not enqueued) job of SHARDS one-row shards, its ledger dropped afterwards."""
    write_rows(tmp_path / "in.parquet", SHARDS)
    manifest, layout = prepare(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=1), settings)
    yield manifest, layout
    client.delete(*job_keys(manifest.job_id))


def _commit(layout: OutputLayout, shard: int, errors: int = 0) -> dict[str, Any]:
    """Write shard's part and marker as a worker does; returns what the worker passes on."""
    summary = {"rows": 1, "errors": errors, "seconds": 0.25}
    layout.commit(shard, pa.table({"row_index": [shard]}), summary)
    return {**summary, "committed_at": time.time()}


def _ledger(client: redis.Redis, manifest: Manifest) -> Ledger:
    return Ledger.for_manifest(client, manifest, retention=3600)


def test_only_the_last_commit_reads_markers(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                            settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, layout = job
    ledger = _ledger(client, manifest)
    counting = CountingStorage(layout, monkeypatch)
    for shard in range(SHARDS - 1):
        marker = _commit(layout, shard, errors=shard % 2)
        assert complete_if_last(layout, manifest, shard, marker, ledger) is False
    assert counting.markers_read() == 0
    assert counting.listings == 1  # the first commit found no ledger and listed the names once
    assert complete_if_last(layout, manifest, 3, {"rows": 1, "errors": 1, "seconds": 0.1}, ledger) is False

    counting.reset()
    last = _commit(layout, SHARDS - 1)
    assert complete_if_last(layout, manifest, SHARDS - 1, last, ledger) is True
    assert counting.markers_read() == 0 and counting.listings == 1  # the one pass: the names, not the markers
    completion = layout.completion()
    assert completion is not None
    assert (completion["rows"], completion["errors"], completion["shards"]) == (SHARDS, (SHARDS - 1) // 2, SHARDS)
    # A redelivered copy of the last shard: counted already, _SUCCESS exists, nothing is read again.
    counting.reset()
    assert complete_if_last(layout, manifest, SHARDS - 1, last, ledger) is False
    assert counting.markers_read() == 0

    # Finished: the broker state expires after the retention period, not the two weeks of a running job;
    # the job index entry stays, so `jobs` still lists the job.
    assert all(0 < client.ttl(key) <= 3600 for key in job_keys(manifest.job_id) if client.exists(key))
    remember(settings, manifest.job_id, layout.location)
    assert client.ttl(f"batchformers:job:{manifest.job_id}") == -1
    assert (manifest.job_id, layout.location) in [(j.job_id, j.output) for j in known_jobs(settings)]

    # Status of the finished job: no listing, no marker read.
    counting.reset()
    current = job_status(layout.location, settings)
    assert current.source == "ledger" and current.state == "complete"
    assert (current.committed, current.rows_done, current.row_errors) == (SHARDS, SHARDS, (SHARDS - 1) // 2)
    assert counting.listings == 0 and counting.markers_read() == 0
    assert current.rows_per_second and current.rows_per_second > 0


def test_a_lost_ledger_is_rebuilt_from_marker_names(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                                    settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, layout = job
    ledger = _ledger(client, manifest)
    half = SHARDS // 2
    for shard in range(half):
        assert not complete_if_last(layout, manifest, shard, _commit(layout, shard, errors=1), ledger)
    layout.mark_failed(SHARDS - 1, "InputError: gone", attempts=1)  # (retried and committed at the end)
    client.delete(*job_keys(manifest.job_id))  # Redis lost the job's state
    counting = CountingStorage(layout, monkeypatch)

    # Status meanwhile: no ledger, so the markers are listed and read (each once with a cache).
    cache: MarkerCache = {}
    current = job_status(layout.location, settings, cache)
    assert current.source == "markers" and (current.committed, current.row_errors) == (half, half)
    counting.reset()
    assert job_status(layout.location, settings, cache).committed == half
    assert counting.markers_read() == 1  # only the failure marker (its error); no commit marker twice

    # The next commit rebuilds the ledger from the names alone.
    counting.reset()
    assert not complete_if_last(layout, manifest, half, _commit(layout, half), ledger)
    assert counting.listings == 1 and counting.markers_read() == 1  # the one failure marker, for its error
    tally = ledger.read()
    assert tally is not None and tally.committed == set(range(half + 1)) and tally.unread == set(range(half))
    assert tally.failed == {SHARDS - 1: "InputError: gone"}

    # Status reads the rebuilt shards' markers once, for everyone; then none.
    counting.reset()
    current = job_status(layout.location, settings)
    assert current.source == "ledger" and (current.committed, current.rows_done, current.row_errors) == (
        half + 1, half + 1, half)
    assert counting.markers_read() == half + 1  # the rebuilt shards' markers, and the failure marker's check
    assert current.failures == {SHARDS - 1: "InputError: gone"}
    counting.reset()
    assert job_status(layout.location, settings).row_errors == half and counting.markers_read() == 1

    for shard in range(half + 1, SHARDS):
        done = complete_if_last(layout, manifest, shard, _commit(layout, shard), ledger)
        assert done is (shard == SHARDS - 1)
    completion = layout.completion()
    assert completion is not None and (completion["rows"], completion["errors"]) == (SHARDS, half)


def test_a_ledger_of_an_earlier_submission_is_not_trusted(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                                          settings: Settings) -> None:
    manifest, layout = job
    stale = Ledger(client, manifest.job_id, SHARDS, manifest.created_at - 100)
    stale.rebuild(range(SHARDS))  # "everything committed", from an output since deleted
    assert job_status(layout.location, settings).committed == 0
    ledger = _ledger(client, manifest)
    assert not complete_if_last(layout, manifest, 0, _commit(layout, 0), ledger)
    tally = ledger.read()
    assert tally is not None and tally.committed == {0} and not layout.is_complete()


def test_failures_running_shards_and_retry(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                           settings: Settings) -> None:
    manifest, layout = job
    ledger = _ledger(client, manifest)
    complete_if_last(layout, manifest, 0, _commit(layout, 0), ledger)
    layout.mark_failed(1, "InputError: gone", attempts=1)
    ledger.record_failure(1, "InputError: gone")
    for shard in (2, 3):
        ledger.started(shard)
        client.set(f"batchformers:lease:{manifest.job_id}:{shard}", "w", ex=30)
    ledger.started(4)  # a worker that died: no lease any more

    current = job_status(layout.location, settings)
    assert current.source == "ledger"
    assert current.failures == {1: "InputError: gone"} and current.running_shards == [2, 3]
    assert current.pending == SHARDS - 1 - 1 - 2

    layout.clear_failed(1)  # what `retry` does: the shard is pending again
    assert job_status(layout.location, settings).failed == 0
    for shard in (2, 3):
        client.delete(f"batchformers:lease:{manifest.job_id}:{shard}")


def test_planning_reads_footers_concurrently_with_progress(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    for number in range(40):
        write_rows(folder / f"part-{number:03d}.parquet", 1 + number % 3, first=number * 10)
    seen: list[tuple[int, int]] = []
    files = discover(str(folder), progress=lambda done, total: seen.append((done, total)))
    assert [Path(f.url).name for f in files] == [f"part-{n:03d}.parquet" for n in range(40)]
    assert [f.num_rows for f in files] == [1 + n % 3 for n in range(40)]
    assert sorted(seen) == [(n, 40) for n in range(1, 41)]
    assert schema_of(files[0]).names == ["id", "text"]
    manifest = build_manifest(tokenize_spec(folder, tmp_path / "out"), progress=lambda *_: None)
    assert manifest.total_rows == sum(1 + n % 3 for n in range(40)) and len(manifest.shards) == 40


@pytest.mark.slow
def test_job_completes_exactly_once_after_redis_loses_its_ledger(tmp_path: Path, settings: Settings,
                                                                 start_workers: Any, client: redis.Redis) -> None:
    ids = write_rows(tmp_path / "in.parquet", 30)
    workers = start_workers(1, **{FAULTS_ENV: "sleep=0.2"})
    spec = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=2)
    submission = submit(spec, settings)
    keys = job_keys(submission.job_id)

    def counted() -> int:
        return int(client.scard(keys[1]))

    wait_until(lambda: counted() >= 4, 60, "four shards counted")
    client.delete(*keys)  # mid-job: Redis lost the ledger
    assert not OutputLayout(submission.output).is_complete()
    status = wait(submission.output, timeout=90, settings=settings)
    assert status.state == "complete", status
    assert (status.committed, status.rows_done) == (15, 30)
    completion = OutputLayout(submission.output).completion()
    assert completion is not None and (completion["rows"], completion["shards"]) == (30, 15)
    assert_exactly_once(submission.output, ids)
    assert completions_logged(workers.log_dir, submission.job_id) == 1
    assert "no ledger on the broker; rebuilt from" in worker_logs(workers.log_dir)
    tally = Ledger(client, submission.job_id, 15, OutputLayout(submission.output).read_manifest().created_at).read()
    assert tally is not None and tally.committed == set(range(15)) and tally.finished_at is not None


def test_storage_reads_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counting helper itself sees reads made through the layout (or the tests above prove nothing)."""
    layout = OutputLayout(str(tmp_path / "out"))
    layout.commit(0, pa.table({"x": [1]}), {"rows": 1, "errors": 0, "seconds": 0.0})
    counting = CountingStorage(layout, monkeypatch)
    assert layout.committed() and counting.markers_read() == 1 and counting.listings == 1
    assert pq.read_table(str(tmp_path / "out" / "part-00000.parquet")).num_rows == 1
