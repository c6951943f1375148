"""The ledger's contract on a real Redis, field by field: what each call leaves in the tally and for how long.

A safety net for moving the module: every public call, every total, every fallback and every
expiry is pinned here, so a rewrite that changes what ``status`` or a commit sees fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from jobs.ledger import Ledger, Tally, generation_of, job_keys, marker_times
from jobs.manifest import Manifest, ShardPlan
from jobs.protocol import status_record_key

TWO_WEEKS = 14 * 24 * 3600  # an unfinished job's ledger outlives any real job
ONE_WEEK = 7 * 24 * 3600  # a finished job's broker state, unless the settings say otherwise
SLACK = 5  # seconds a TTL may have run down between the write and the check


@pytest.fixture
def job_id(client: redis.Redis) -> Iterator[str]:
    job_id = f"test-{uuid.uuid4().hex[:8]}"
    yield job_id
    client.delete(*job_keys(job_id))


@pytest.fixture
def ledger(client: redis.Redis, job_id: str) -> Ledger:
    return Ledger(client, job_id, shards=5, created_at=1000.0, retention=60)


def _marker(**fields: float | None) -> dict[str, float | None]:
    return {"rows": 3, "errors": 1, "seconds": 2.0, "committed_at": 2000.0, **fields}


def _ttls(ledger: Ledger) -> list[int]:
    """The TTL of each of the ledger's five keys (-2: the key does not exist)."""
    return [ledger.client.ttl(key) for key in job_keys(ledger.job_id)]


def _tally(ledger: Ledger) -> Tally:
    tally = ledger.read()
    assert tally is not None
    return tally


def test_marker_times_are_the_start_and_the_commit() -> None:
    assert marker_times({"committed_at": 10.5, "seconds": 2.5}) == (8.0, 10.5)
    assert marker_times({"committed_at": 3}) == (3.0, 3.0)
    assert marker_times({"seconds": 2}) == (-2.0, 0.0)
    started, committed_at = marker_times({})
    assert (started, committed_at) == (0.0, 0.0) and isinstance(started, float) and isinstance(committed_at, float)


def test_the_generation_is_the_submit_time_as_a_float(ledger: Ledger, client: redis.Redis) -> None:
    assert generation_of(1000) == generation_of(1000.0) == "1000.0"
    assert generation_of(1000.25) == "1000.25"
    assert not ledger.exists()
    assert ledger.rebuild([]) == 0
    assert client.hget(job_keys(ledger.job_id)[0], "generation") == b"1000.0"
    assert ledger.exists()
    same = Ledger(client, ledger.job_id, shards=5, created_at=1000)  # an int submit time is the same submission
    assert same.exists() and same.read() is not None
    assert not Ledger(client, ledger.job_id, shards=5, created_at=1000.5).exists()


def test_exists_and_read_with_a_client_that_decodes(ledger: Ledger, redis_url: str) -> None:
    ledger.rebuild([1])
    ledger.record_failure(2, "boom")
    ledger.started(3)
    ledger.record_commit(1, _marker(rows=4))
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        mirror = Ledger(decoding, ledger.job_id, shards=5, created_at=1000.0)
        assert mirror.exists()
        assert mirror.read() == ledger.read()
        assert _tally(mirror).failed == {2: "boom"}
        assert not Ledger(decoding, ledger.job_id, shards=5, created_at=999.0).exists()
    finally:
        decoding.close()


def test_a_commit_adds_its_totals_and_leaves_running_and_failed(ledger: Ledger) -> None:
    assert ledger.rebuild([]) == 0
    ledger.started(1)
    ledger.record_failure(2, "boom")
    assert ledger.record_commit(1, _marker(rows=7, errors=2, truncated=3, seconds=4.0, committed_at=100.0)) == (True, 1)
    assert ledger.record_commit(2, _marker(rows=5, errors=0, truncated=None, seconds=10.0, committed_at=105.0)) == (
        True, 2)
    tally = _tally(ledger)
    assert (tally.rows, tally.errors, tally.truncated) == (12, 2, 3)
    assert (tally.first_start, tally.last_commit) == (95.0, 105.0)
    assert (tally.committed, tally.running, tally.failed, tally.unread) == ({1, 2}, set(), {}, set())
    # A later start and an earlier commit move neither end of the span; a marker without totals adds nothing.
    assert ledger.record_commit(4, {"committed_at": 101.0}) == (True, 3)
    tally = _tally(ledger)
    assert (tally.rows, tally.errors, tally.truncated, tally.first_start, tally.last_commit) == (12, 2, 3, 95.0, 105.0)
    assert tally.committed == {1, 2, 4} and tally.shards == 5 and tally.finished_at is None


def test_a_repeated_commit_adds_nothing_but_still_clears_the_shard(ledger: Ledger) -> None:
    ledger.rebuild([])
    assert ledger.record_commit(0, _marker()) == (True, 1)
    ledger.started(0)  # a redelivered message ran it again
    ledger.record_failure(0, "late")
    assert ledger.record_commit(0, _marker(rows=100, seconds=500.0, committed_at=9999.0)) == (False, 1)
    tally = _tally(ledger)
    assert (tally.rows, tally.errors, tally.first_start, tally.last_commit) == (3, 1, 1998.0, 2000.0)
    assert (tally.running, tally.failed) == (set(), {})


def test_a_commit_without_a_ledger_writes_nothing(ledger: Ledger, client: redis.Redis) -> None:
    assert ledger.record_commit(0, _marker()) is None
    assert client.exists(*job_keys(ledger.job_id)) == 0


def test_an_unfinished_ledger_lives_two_weeks_after_its_last_change(ledger: Ledger) -> None:
    ledger.rebuild([0])
    ledger.started(1)
    ledger.record_failure(2, "boom")
    ledger.started(3)
    assert all(TWO_WEEKS - SLACK < ttl <= TWO_WEEKS for ttl in _ttls(ledger))
    ledger.client.persist(job_keys(ledger.job_id)[0])
    ledger.record_commit(4, _marker())
    assert all(TWO_WEEKS - SLACK < ttl <= TWO_WEEKS for ttl in _ttls(ledger))


def test_the_active_lifetime_is_a_parameter(client: redis.Redis, job_id: str) -> None:
    ledger = Ledger(client, job_id, shards=5, created_at=1000.0, active_seconds=100)
    ledger.rebuild([0])
    assert [ttl > 0 for ttl in _ttls(ledger)] == [True, True, True, False, False]
    ledger.started(1)
    ledger.record_failure(2, "boom")
    ledger.started(3)
    ledger.record_commit(4, _marker())
    assert all(100 - SLACK < ttl <= 100 for ttl in _ttls(ledger))


def test_rebuild_counts_each_shard_once_and_keeps_what_it_knew(ledger: Ledger) -> None:
    assert ledger.rebuild([3, 1, 1]) == 2
    tally = _tally(ledger)
    assert (tally.committed, tally.unread, tally.shards) == ({1, 3}, {1, 3}, 5)
    assert (tally.rows, tally.errors, tally.truncated) == (0, 0, 0)
    assert (tally.first_start, tally.last_commit, tally.finished_at) == (None, None, None)
    assert (tally.failed, tally.running) == ({}, set())
    assert ledger.record_commit(3, _marker(rows=2, errors=0)) == (True, 2)  # an unread shard's own commit counts
    assert ledger.rebuild(iter([1, 3, 4])) == 3
    tally = _tally(ledger)
    assert (tally.committed, tally.unread, tally.rows) == ({1, 3, 4}, {1, 4}, 2)


def test_absorb_adds_an_unread_markers_totals_once(ledger: Ledger) -> None:
    ledger.rebuild([1, 2])
    ledger.record_commit(0, _marker(rows=1, errors=0, seconds=1.0, committed_at=60.0))
    assert ledger.absorb(1, _marker(rows=4, errors=2, truncated=5, seconds=30.0, committed_at=50.0)) is True
    tally = _tally(ledger)
    assert (tally.rows, tally.errors, tally.truncated) == (5, 2, 5)
    assert (tally.first_start, tally.last_commit, tally.unread) == (20.0, 60.0, {2})
    assert ledger.absorb(1, _marker(rows=4)) is False  # a second reader does not add it again
    assert ledger.absorb(0, _marker(rows=4)) is False  # read already: its commit counted it
    assert ledger.absorb(2, {"committed_at": 70.0}) is True  # a marker without totals adds none
    tally = _tally(ledger)
    assert (tally.rows, tally.errors, tally.truncated, tally.first_start, tally.last_commit) == (5, 2, 5, 20.0, 70.0)
    assert tally.unread == set()


def test_absorb_into_another_generation_does_nothing(ledger: Ledger, client: redis.Redis) -> None:
    ledger.rebuild([1])
    other = Ledger(client, ledger.job_id, shards=5, created_at=1001.0)
    assert other.absorb(1, _marker()) is False
    tally = _tally(ledger)
    assert (tally.unread, tally.rows) == ({1}, 0)


def test_started_failed_stopped_and_forgotten(ledger: Ledger) -> None:
    ledger.rebuild([])
    ledger.started(2)
    ledger.started(3)
    assert _tally(ledger).running == {2, 3}
    ledger.record_failure(2, "boom")
    tally = _tally(ledger)
    assert (tally.failed, tally.running) == ({2: "boom"}, {3})
    ledger.started(2)  # retried: running again, no longer failed
    tally = _tally(ledger)
    assert (tally.failed, tally.running) == ({}, {2, 3})
    ledger.stopped(3)
    ledger.stopped(4)  # never started: nothing to do
    assert _tally(ledger).running == {2}
    ledger.record_failure(2, "boom")
    ledger.record_failure(4, "bust")
    ledger.forget_failure([])
    ledger.forget_failure(shard for shard in [2, 0])
    assert _tally(ledger).failed == {4: "bust"}


def test_read_falls_back_for_missing_fields(ledger: Ledger, client: redis.Redis) -> None:
    assert ledger.read() is None
    client.hset(job_keys(ledger.job_id)[0], "generation", "1000.0")
    assert ledger.read() == Tally(shards=5, committed=set(), unread=set(), failed={}, running=set(), rows=0, errors=0,
                                  first_start=None, last_commit=None, finished_at=None, truncated=0)
    client.hset(job_keys(ledger.job_id)[0], mapping={"shards": 7, "first_start": "", "last_commit": "12.5"})
    tally = _tally(ledger)
    assert (tally.shards, tally.first_start, tally.last_commit) == (7, None, 12.5)


def test_a_tally_has_no_finish_and_no_truncation_unless_told() -> None:
    tally = Tally(shards=1, committed=set(), unread=set(), failed={}, running=set(), rows=0, errors=0,
                  first_start=None, last_commit=None)
    assert (tally.finished_at, tally.truncated) == (None, 0)


def test_finish_records_the_time_and_every_key_expires_after_the_retention(ledger: Ledger) -> None:
    ledger.rebuild([0])
    ledger.started(1)
    ledger.record_failure(2, "boom")
    ledger.started(3)
    ledger.finish(3000.25)
    assert _tally(ledger).finished_at == 3000.25
    assert all(60 - SLACK < ttl <= 60 for ttl in _ttls(ledger))


def test_finish_gives_the_jobs_status_record_the_same_retention(ledger: Ledger, client: redis.Redis) -> None:
    record, other = status_record_key(ledger.job_id), status_record_key(f"{ledger.job_id}-other")
    client.hset(record, "job_id", ledger.job_id)  # written at submit, read by ``status``
    client.hset(other, "job_id", "another job")
    try:
        ledger.rebuild([0])
        ledger.finish(3000.0)
        assert 60 - SLACK < client.ttl(record) <= 60  # it goes with the ledger, not a week later or never
        assert client.ttl(other) == -1  # another job's record is not touched
    finally:
        client.delete(record, other)


@pytest.mark.parametrize(("retention", "expected"), [(None, ONE_WEEK), (90.9, 90), (0.4, 1)])
def test_the_retention_is_whole_seconds_and_at_least_one(
    client: redis.Redis, job_id: str, retention: float | None, expected: int
) -> None:
    ledger = (Ledger(client, job_id, shards=5, created_at=1000.0) if retention is None
              else Ledger(client, job_id, shards=5, created_at=1000.0, retention=retention))
    ledger.rebuild([])
    ledger.finish(3000.0)
    assert expected - SLACK < client.ttl(job_keys(job_id)[0]) <= expected


def test_a_manifest_names_the_job_its_shards_and_its_generation(client: redis.Redis, job_id: str) -> None:
    manifest = Manifest(job_id=job_id, spec={}, spec_fingerprint="", input_fingerprint="", sources=[],
                        shards=[ShardPlan(index=i, source=0, start=i, stop=i + 1) for i in range(3)],
                        output_schema=[], versions={}, created_at=1234.5)
    ledger = Ledger.for_manifest(client, manifest)
    assert (ledger.job_id, ledger.shards, ledger.generation) == (job_id, 3, "1234.5")
    ledger.rebuild([0])
    assert _tally(ledger).shards == 3
    ledger.finish(2000.0)
    assert ONE_WEEK - SLACK < client.ttl(job_keys(job_id)[0]) <= ONE_WEEK
    Ledger.for_manifest(client, manifest, retention=30).finish(2001.0)
    assert 30 - SLACK < client.ttl(job_keys(job_id)[0]) <= 30


def test_drop_removes_every_key(ledger: Ledger, client: redis.Redis) -> None:
    ledger.rebuild([0])
    ledger.started(1)
    ledger.record_failure(2, "boom")
    ledger.started(3)
    assert client.exists(*job_keys(ledger.job_id)) == 5
    ledger.drop()
    assert client.exists(*job_keys(ledger.job_id)) == 0
