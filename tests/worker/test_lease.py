"""Shard leases and delivery counts against the real test Redis, without any worker process."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from jobs.protocol import DELIVERIES_PREFIX, LAST_ERROR_PREFIX
from tests.reliability import wait_until
from worker import deliveries
from worker.deliveries import DeliveryCount
from worker.lease import KEY_PREFIX, MIN_WAIT, ShardLease, client_for, lease_key, worker_identity


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def job() -> Iterator[str]:
    yield f"lease-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _own_keys(client: redis.Redis, job: str) -> Iterator[None]:
    yield
    for key in client.scan_iter(f"batchformers:*{job}*"):  # only this test's keys
        client.delete(key)


def test_key_identity_and_clients(redis_url: str) -> None:
    assert lease_key("j", 3) == f"{KEY_PREFIX}j:3" == "batchformers:lease:j:3"
    assert worker_identity("w1@h").startswith("w1@h/") and worker_identity("w1@h").endswith(f"/{__import__('os').getpid()}")
    assert worker_identity().split("/")[0] == __import__("socket").gethostname()
    assert client_for(redis_url) is client_for(redis_url)
    other_db = 13 if redis_url.endswith("/14") else 14
    other = redis_url.rsplit("/", 1)[0] + f"/{other_db}"
    assert client_for(other) is not client_for(redis_url)  # one client per URL
    assert client_for(other).connection_pool.connection_kwargs["db"] == other_db
    kwargs = client_for(redis_url).connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"], kwargs["health_check_interval"]) == (10, 10, 30)


def test_one_holder_at_a_time(client: redis.Redis, job: str) -> None:
    mine = ShardLease(client, job, 0, "a/1", seconds=5)
    assert mine.lost is False and mine.holder == "a/1" and mine.seconds == 5
    theirs = ShardLease(client, job, 0, "b/2", seconds=5)
    other_shard = ShardLease(client, job, 1, "b/2", seconds=5)
    assert mine.acquire() and mine.acquire()  # ours already: refreshed
    assert not theirs.acquire() and not theirs.held()
    assert theirs.lost  # a commit-time check that finds another holder marks the run as robbed
    assert other_shard.acquire()
    assert mine.held() and mine.current_holder() == "a/1" == theirs.current_holder()
    ttl = client.pttl(mine.key)
    assert 4000 < ttl <= 5000
    theirs.release()  # not theirs to release
    assert mine.current_holder() == "a/1"
    mine.release()
    assert mine.current_holder() is None and theirs.acquire() and theirs.current_holder() == "b/2"


def test_lease_expires_when_not_refreshed(client: redis.Redis, job: str) -> None:
    dead = ShardLease(client, job, 0, "dead/1", seconds=0.3)
    assert dead.acquire()
    heir = ShardLease(client, job, 0, "heir/2", seconds=5)
    assert not heir.acquire()
    wait_until(heir.acquire, 5, "the dead holder's lease to expire", poll=0.05)
    assert heir.current_holder() == "heir/2"


def test_wait_hint(client: redis.Redis, job: str) -> None:
    holder = ShardLease(client, job, 0, "a/1", seconds=8)
    waiter = ShardLease(client, job, 0, "b/2", seconds=4)
    assert waiter.wait_hint() == MIN_WAIT  # no lease: look again soon
    holder.acquire()
    hint = waiter.wait_hint()
    assert hint == 4  # never more than one of our own leases
    client.pexpire(holder.key, 2000)
    assert 2.0 < waiter.wait_hint() <= 2.5  # the holder's remaining time, plus half a second
    patient = ShardLease(client, job, 0, "c/3", seconds=100)
    client.pexpire(holder.key, 50_000)
    assert 50.47 < patient.wait_hint() <= 50.5  # milliseconds read as such
    client.pexpire(holder.key, 100)
    assert waiter.wait_hint() == MIN_WAIT
    client.persist(holder.key)  # no TTL at all (pttl -1): do not wait for ever
    assert waiter.wait_hint() == MIN_WAIT


def test_kept_refreshes_in_the_background(client: redis.Redis, job: str) -> None:
    held = ShardLease(client, job, 0, "a/1", seconds=0.6)
    assert held.acquire()
    with held.kept():
        time.sleep(1.5)  # the work being done: longer than two leases
        assert held.current_holder() == "a/1" and not held.lost
    assert not [t for t in threading.enumerate() if t.name == f"lease-{held.key}"]  # heartbeat stopped
    wait_until(lambda: held.current_holder() is None, 5, "the lease to lapse once no longer kept", poll=0.05)


def test_kept_notices_a_takeover(client: redis.Redis, job: str) -> None:
    held = ShardLease(client, job, 0, "a/1", seconds=0.6)
    assert held.acquire()
    with held.kept():
        client.set(held.key, "thief/9", px=5000)
        wait_until(lambda: held.lost, 5, "the heartbeat to see the takeover", poll=0.05)
        assert not held.held()
    assert held.current_holder() == "thief/9"


def test_a_lease_the_broker_cannot_confirm_is_not_held(job: str, refused_port: int) -> None:
    """A worker paused past its lease may have been replaced (and its shard committed and compacted):
    a commit-time check the broker cannot answer must not let it commit; the shard is given back."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    gone = redis.Redis(port=refused_port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    unreachable = ShardLease(gone, job, 0, "a/1", seconds=1)
    with pytest.raises(redis.ConnectionError):
        unreachable.held()
    unreachable.lost = True
    assert not unreachable.held()
    unreachable.release()  # logged, not raised


def test_heartbeat_survives_broker_errors(job: str, monkeypatch: pytest.MonkeyPatch, client: redis.Redis) -> None:
    held = ShardLease(client, job, 0, "a/1", seconds=0.3)
    calls: list[int] = []

    def flaky(*_args: object) -> bool:
        calls.append(1)
        raise redis.ConnectionError("down")

    monkeypatch.setattr(held, "_take_or_refresh", flaky)
    with held.kept():
        wait_until(lambda: len(calls) >= 2, 5, "two failed refreshes", poll=0.05)
    assert not held.lost


def test_delivery_counts(client: redis.Redis, job: str) -> None:
    counts = DeliveryCount(client, job, 4)
    assert counts.key == f"{DELIVERIES_PREFIX}{job}:4" and counts.error_key == f"{LAST_ERROR_PREFIX}{job}:4"
    assert [counts.increment() for _ in range(3)] == [1, 2, 3]
    assert 0 < client.ttl(counts.key) <= deliveries.KEEP_SECONDS and client.ttl(counts.key) > deliveries.KEEP_SECONDS - 60
    assert counts.last_error() is None
    counts.record_error("boom")
    counts.record_error("bang")
    assert counts.last_error() == "bang"
    assert client.ttl(counts.error_key) > deliveries.KEEP_SECONDS - 60
    other = DeliveryCount(client, job, 5)
    assert other.increment() == 1  # counted per shard
    counts.clear()
    assert counts.last_error() is None and counts.increment() == 1
    assert other.increment() == 2
