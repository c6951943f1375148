"""The job ledger in Redis: first commits count once, a rebuilt ledger's totals are folded in once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from jobs.ledger import ACTIVE_SECONDS, Ledger, job_keys


@pytest.fixture
def ledger(redis_url: str) -> Iterator[Ledger]:
    client = redis.Redis.from_url(redis_url)
    ledger = Ledger(client, f"test-{uuid.uuid4().hex[:8]}", shards=5, created_at=1000.0, retention=60)
    yield ledger
    ledger.drop()
    client.close()


def _marker(rows: int = 3, errors: int = 1, at: float = 2000.0) -> dict[str, float]:
    return {"rows": rows, "errors": errors, "seconds": 2.0, "committed_at": at}


def test_first_commits_count_once(ledger: Ledger) -> None:
    assert ledger.record_commit(0, _marker()) is None  # no ledger yet: the caller rebuilds it
    assert ledger.rebuild([]) == 0
    assert ledger.record_commit(0, _marker(at=2000.0)) == (True, 1)
    assert ledger.record_commit(0, _marker(at=2000.0)) == (False, 1)  # a second commit of shard 0
    assert ledger.record_commit(3, _marker(at=2010.0)) == (True, 2)
    tally = ledger.read()
    assert tally is not None
    assert (tally.committed, tally.rows, tally.errors) == ({0, 3}, 6, 2)
    assert (tally.first_start, tally.last_commit) == (1998.0, 2010.0)
    assert 0 < ledger.client.ttl(job_keys(ledger.job_id)[0]) <= ACTIVE_SECONDS


def test_rebuilt_shards_are_folded_in_once(ledger: Ledger) -> None:
    assert ledger.rebuild([0, 1, 2]) == 3
    assert ledger.record_commit(2, _marker()) == (True, 3)  # its own marker: counted, no longer unread
    assert ledger.absorb(0, _marker()) is True
    assert ledger.absorb(0, _marker()) is False  # a second status process does not add it again
    tally = ledger.read()
    assert tally is not None and tally.unread == {1} and (tally.rows, tally.errors) == (6, 2)


def test_another_generation_is_not_this_ledger(ledger: Ledger) -> None:
    ledger.rebuild([0, 1])
    other = Ledger(ledger.client, ledger.job_id, shards=5, created_at=1001.0)
    assert other.read() is None and other.record_commit(0, _marker()) is None
    assert other.rebuild([4]) == 1  # replaces the old one
    assert ledger.read() is None


def test_a_finished_job_expires_after_the_retention(ledger: Ledger) -> None:
    ledger.rebuild([])
    ledger.record_commit(0, _marker())
    ledger.record_failure(1, "boom")
    ledger.finish(3000.0)
    ttls = [ledger.client.ttl(key) for key in job_keys(ledger.job_id) if ledger.client.exists(key)]
    assert ttls and all(0 < ttl <= 60 for ttl in ttls)
    ledger.record_commit(2, _marker())  # a late duplicate does not make it live longer
    assert 0 < ledger.client.ttl(job_keys(ledger.job_id)[0]) <= 60
