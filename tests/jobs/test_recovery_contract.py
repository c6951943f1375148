"""Recovery's contract in process on a real Redis: which jobs a scanner looks at, which shards it re-sends, once.

A safety net for moving the module: the jobs found (queue, age, finished, cancelled, replaced), the
takeover of running shards without a lease, the two looks before a lost shard is re-sent, the
messages found in queues and in the unacked hash, and the one claim per shard and start count,
pinned by what ``send`` is asked to do and what is left on the broker. No Celery: ``send`` records.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis

from jobs import routing
from jobs.io.layout import MANIFEST_FILE, OutputLayout
from jobs.ledger import ACTIVE_SECONDS
from jobs.manifest import Manifest
from jobs.protocol import (
    COPIES_PREFIX,
    COPY_PREFIX,
    HEAL_SCAN_KEY,
    JOB_QUEUES_KEY,
    JOBS_KEY,
    SINCE_PREFIX,
    TASK_NAME,
    UNSEEN_PREFIX,
    copy_lease_key,
    deliveries_key,
    job_index_key,
    lease_key,
    requeue_key,
    running_key,
)
from jobs.recovery import (
    KOMBU_BINDINGS,
    LOCK_LEASES,
    SCAN_PAGE,
    UNACKED_KEY,
    UNREADABLE_BACKOFF_LEASES,
    Recovery,
    ScanReport,
    shard_of,
)
from jobs.settings import Settings
from jobs.speculation import Speculation, started
from producer.submit import prepare
from tests.reliability import tokenize_spec, write_rows

SHARDS = 3
LEASE = 0.25  # a heal turn lasts lease / 2: a test waits for its own turn a few tenths at most (exact in binary)


class Sent:
    """A ``send`` that records (job, shards, queue) and can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int], str]] = []
        self.locations: list[str] = []
        self.fail = False

    def __call__(self, manifest: Manifest, layout: OutputLayout, shards: set[int], queue: str) -> int:
        if self.fail:
            raise ConnectionError("the broker is away")
        self.calls.append((manifest.job_id, sorted(shards), queue))
        self.locations.append(layout.location)
        return len(shards)


@pytest.fixture
def job(tmp_path: Path, settings: Settings, client: redis.Redis) -> Iterator[tuple[Manifest, OutputLayout]]:
    """A prepared job of 3 shards, known to the broker as a submit leaves it (index, queue, submit time)."""
    write_rows(tmp_path / "in.parquet", SHARDS)
    manifest, layout = prepare(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=1), settings)
    job_id = manifest.job_id
    client.zadd(JOBS_KEY, {job_id: time.time()})
    client.set(job_index_key(job_id), layout.location)
    client.hset(JOB_QUEUES_KEY, job_id, settings.queue)
    yield manifest, layout
    client.zrem(JOBS_KEY, job_id)
    client.hdel(JOB_QUEUES_KEY, job_id)
    keys = [job_index_key(job_id), running_key(job_id), UNSEEN_PREFIX + job_id]
    for shard in range(SHARDS):
        keys += [lease_key(job_id, shard), deliveries_key(job_id, shard)]
        keys += [requeue_key(job_id, shard, starts) for starts in range(3)]
    keys += routing.queue_keys(settings.queue) + routing.queue_keys(routing.job_queue(settings.queue, job_id))
    client.delete(*keys)


def _recovery(client: redis.Redis, queue: str, sent: Sent, lease: float = LEASE, **options: Any) -> Recovery:
    return Recovery(client, sent, lease, queue, identity=f"test-{uuid.uuid4().hex[:6]}", **options)


def _message(job_id: str, shard: int, task: str = TASK_NAME, encoded: bool = True) -> dict[str, Any]:
    body = json.dumps([[{"job_id": job_id, "shard": shard}], {}, {}])
    if encoded:
        return {"headers": {"task": task}, "body": base64.b64encode(body.encode()).decode(),
                "properties": {"body_encoding": "base64"}}
    return {"headers": {"task": task}, "body": body, "properties": {}}


def _heal_until_checked(recovery: Recovery, now: float) -> Any:
    """Scan until this scanner gets the heal turn (another process may hold it for lease / 2)."""
    deadline = time.monotonic() + 5
    while True:
        report = recovery.scan(now)
        if report.healing_checked or time.monotonic() > deadline:
            return report
        time.sleep(LEASE / 4)


def test_the_jobs_a_scanner_looks_at(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                     settings: Settings) -> None:
    manifest, layout = job
    sent = Sent()
    ours = _recovery(client, settings.queue, sent)
    assert ours.interval == LEASE / 4
    assert [j.manifest.job_id for j in ours.active_jobs(time.time())] == [manifest.job_id]
    assert ours.active_jobs(time.time())[0].queue == settings.queue
    assert _recovery(client, settings.queue + "-other", sent).active_jobs(time.time()) == []
    assert _recovery(client, settings.queue, sent).active_jobs(time.time() + ACTIVE_SECONDS + 60) == []
    # Named by its output, a job is looked at whatever its queue, once.
    named = _recovery(client, settings.queue + "-other", sent, outputs=[layout.location, layout.location])
    found = named.active_jobs(time.time())
    assert [j.manifest.job_id for j in found] == [manifest.job_id] and found[0].queue == settings.queue
    layout.cancel()
    assert ours.active_jobs(time.time()) == []
    layout.uncancel()
    assert len(ours.active_jobs(time.time())) == 1
    layout.mark_complete({"rows": SHARDS})
    assert ours.active_jobs(time.time()) == [] and _recovery(client, settings.queue, sent).active_jobs(
        time.time()) == []


def test_a_job_whose_output_holds_another_job_or_is_gone_is_skipped(job: tuple[Manifest, OutputLayout],
                                                                    client: redis.Redis, settings: Settings,
                                                                    tmp_path: Path) -> None:
    manifest, _ = job
    out = tmp_path / "out"
    out.rename(tmp_path / "moved")  # unreadable for now (deleted, unreachable)
    recovery = _recovery(client, settings.queue, Sent())
    assert recovery.active_jobs(time.time()) == []
    (tmp_path / "moved").rename(out)
    assert recovery.active_jobs(time.time()) == []  # not looked at again for UNREADABLE_BACKOFF_LEASES
    time.sleep(UNREADABLE_BACKOFF_LEASES * LEASE + 0.05)
    assert len(recovery.active_jobs(time.time())) == 1
    write_rows(tmp_path / "in2.parquet", 2)
    _, other_layout = prepare(tokenize_spec(tmp_path / "in2.parquet", tmp_path / "other", shard_rows=1), settings)
    client.set(job_index_key(manifest.job_id), other_layout.location)
    replaced = _recovery(client, settings.queue, Sent())
    assert replaced.active_jobs(time.time()) == []
    client.set(job_index_key(manifest.job_id), str(out))
    assert len(replaced.active_jobs(time.time())) == 1


def test_a_scanner_remembers_what_it_read(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                          settings: Settings, tmp_path: Path) -> None:
    """A job read once is kept (its manifest is not read again); a replaced output is not looked at again."""
    manifest, layout = job
    recovery = _recovery(client, settings.queue, Sent())
    assert len(recovery.active_jobs(time.time())) == 1
    manifest_file = tmp_path / "out" / MANIFEST_FILE
    manifest_file.rename(tmp_path / "manifest.json")
    assert len(recovery.active_jobs(time.time())) == 1
    (tmp_path / "manifest.json").rename(manifest_file)
    write_rows(tmp_path / "in2.parquet", 2)
    other, _ = prepare(tokenize_spec(tmp_path / "in2.parquet", tmp_path / "other", shard_rows=1), settings)
    fresh = _recovery(client, settings.queue, Sent())
    layout.write_manifest(other)  # a later submit took the output
    assert fresh.active_jobs(time.time()) == []
    layout.write_manifest(manifest)
    assert fresh.active_jobs(time.time()) == []


def test_a_job_named_by_its_output_without_a_queue_is_ours(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                                           settings: Settings) -> None:
    manifest, layout = job
    client.hdel(JOB_QUEUES_KEY, manifest.job_id)
    found = _recovery(client, "some-queue", Sent(), outputs=[layout.location]).active_jobs(time.time())
    assert [j.queue for j in found] == ["some-queue"]


def test_running_shards_without_a_lease_are_taken_over_once(job: tuple[Manifest, OutputLayout],
                                                            client: redis.Redis, settings: Settings) -> None:
    manifest, layout = job
    job_id = manifest.job_id
    layout.commit(2, pa.table({"row_index": [2]}), {"rows": 1, "errors": 0})
    client.sadd(running_key(job_id), 0, 1, 2)
    client.set(lease_key(job_id, 1), "alive/1", px=60_000)
    sent = Sent()
    # Nothing here waits on the lease, but the claim must outlive the scan that took it (its first look reads
    # the manifest and lists the output, then heals) and the next scans: LEASE's 750 ms lock left a loaded
    # machine too little of it, so these scanners have a longer lease (the heal turn: 1 s, released below).
    lease = LEASE * 8
    first, second = _recovery(client, settings.queue, sent, lease), _recovery(client, settings.queue, sent, lease)
    report = first.scan()
    assert report.taken_over == {job_id: [0]} and sent.calls == [(job_id, [0], settings.queue)]
    assert sent.locations == [layout.location]
    assert (LOCK_LEASES - 1) * lease * 1000 < client.pttl(requeue_key(job_id, 0, 0)) <= lease * LOCK_LEASES * 1000
    assert {int(s) for s in client.smembers(running_key(job_id))} == {1}  # 2 was committed: just removed
    client.sadd(running_key(job_id), 0)  # seen again before the new message starts: claimed already
    assert second.scan(time.time()).taken_over == {} and len(sent.calls) == 1
    client.incr(deliveries_key(job_id, 0))  # the re-sent message started, and its worker died too
    assert second.scan(time.time()).taken_over == {job_id: [0]} and len(sent.calls) == 2
    client.sadd(running_key(job_id), 0)
    client.incr(deliveries_key(job_id, 0))  # and once more
    assert second.scan(time.time()).taken_over == {job_id: [0]} and len(sent.calls) == 3
    client.delete(HEAL_SCAN_KEY)  # the other tests' scanners wait for their heal turn, a 0.125 s one


def test_every_dead_holder_is_taken_over_at_once(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                                 settings: Settings) -> None:
    manifest, _ = job
    client.sadd(running_key(manifest.job_id), 0, 1)
    sent = Sent()
    assert _recovery(client, settings.queue, sent).scan().taken_over == {manifest.job_id: [0, 1]}


def test_a_claim_never_takes_a_leased_shard(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                            settings: Settings) -> None:
    """The lease is checked again as the claim is taken: a shard a worker has just started is never re-sent."""
    manifest, _ = job
    client.set(lease_key(manifest.job_id, 1), "alive/1", px=60_000)
    recovery = _recovery(client, settings.queue, Sent())
    assert recovery._claim(manifest.job_id, [0, 1]) == {0}


def test_a_scan_looks_for_stragglers_at_its_own_time(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                                    settings: Settings) -> None:
    """A worker's scan also sends copies of the job's stragglers, judged at the scan's ``now`` (the time a
    caller gives, not the clock), to the job's own queue and output."""
    manifest, layout = job
    job_id = manifest.job_id
    for shard in (0, 1):  # two committed shards of a second each: a median to judge the third by
        layout.commit(shard, pa.table({"row_index": [shard]}), {"rows": 1, "errors": 0, "seconds": 1.0})
    client.sadd(running_key(job_id), 2)
    client.set(lease_key(job_id, 2), "alive/1", px=60_000)  # its holder lives: a copy, never a takeover
    begun = time.time()
    started(client, job_id, 2, now=begun)
    sent, copied = Sent(), Sent()
    recovery = _recovery(client, settings.queue, sent)
    recovery.speculation = Speculation(client, copied, min_seconds=60.0, idle=lambda: True)
    try:
        assert recovery.scan(begun + 30).taken_over == {} and copied.calls == []  # under the minimum: not late
        recovery.scan(begun + 61)
        assert copied.calls == [(job_id, [2], settings.queue)] and copied.locations == [layout.location]
        assert sent.calls == []
    finally:
        client.delete(SINCE_PREFIX + job_id, COPIES_PREFIX + job_id, f"{COPY_PREFIX}{job_id}:2",
                      copy_lease_key(job_id, 2))


def test_one_scanner_a_heal_period_looks_for_lost_messages(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                                           settings: Settings) -> None:
    lease = 1.0  # a turn of 0.5 s: long enough for a scan on a loaded machine

    def scanner(queue: str = settings.queue) -> Recovery:
        return Recovery(client, Sent(), lease, queue, identity=f"test-{uuid.uuid4().hex[:6]}")

    first, second = scanner(), scanner()
    assert _heal_until_checked(first, time.time()).healing_checked
    turn = client.pttl(HEAL_SCAN_KEY)
    assert client.get(HEAL_SCAN_KEY) == first.identity.encode() and 0 < turn <= lease / 2 * 1000
    assert not second.scan().healing_checked  # first's turn lasts lease / 2
    time.sleep(lease / 2 + 0.05)
    assert not scanner(settings.queue + "-none").scan().healing_checked  # no jobs: no look


def test_a_client_that_decodes_its_replies_finds_the_job(job: tuple[Manifest, OutputLayout],
                                                         settings: Settings, redis_url: str) -> None:
    manifest, _ = job
    decoded = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        found = _recovery(decoded, settings.queue, Sent()).active_jobs(time.time())
        assert [j.manifest.job_id for j in found] == [manifest.job_id] and found[0].queue == settings.queue
        decoded.sadd(running_key(manifest.job_id), 0)
        assert _recovery(decoded, settings.queue, Sent()).scan().taken_over == {manifest.job_id: [0]}
    finally:
        decoded.close()


def test_a_takeover_that_cannot_send_reports_nothing(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                                     settings: Settings) -> None:
    manifest, _ = job
    client.sadd(running_key(manifest.job_id), 0)
    sent = Sent()
    sent.fail = True
    assert _recovery(client, settings.queue, sent).scan(time.time()).taken_over == {}
    assert sent.calls == []


def test_a_shard_found_nowhere_on_two_looks_a_lease_apart_is_sent_again(job: tuple[Manifest, OutputLayout],
                                                                        client: redis.Redis,
                                                                        settings: Settings) -> None:
    manifest, layout = job
    job_id = manifest.job_id
    layout.commit(0, pa.table({"row_index": [0]}), {"rows": 1, "errors": 0})
    layout.mark_failed(1, "bad", attempts=1)
    queue = routing.queue_keys(routing.job_queue(settings.queue, job_id))[0]
    sent = Sent()
    recovery = _recovery(client, settings.queue, sent)
    now = time.time()
    client.lpush(queue, json.dumps(_message(job_id, 2)))  # queued: not lost
    assert _heal_until_checked(recovery, now).healing_checked
    assert client.hgetall(UNSEEN_PREFIX + job_id) == {}
    client.delete(queue)
    report = _heal_until_checked(recovery, now)
    assert report.healing_checked and report.healed == {} and sent.calls == []
    assert client.hkeys(UNSEEN_PREFIX + job_id) == [b"2"] and client.ttl(UNSEEN_PREFIX + job_id) > 0
    report = _heal_until_checked(recovery, now + LEASE * 0.99)  # not a lease later yet
    assert report.healed == {} and sent.calls == []
    report = _heal_until_checked(recovery, now + LEASE)
    assert report.healed == {job_id: [2]} and sent.calls == [(job_id, [2], settings.queue)]
    assert client.hgetall(UNSEEN_PREFIX + job_id) == {}


def test_a_shard_is_due_exactly_a_lease_after_it_was_first_missed(job: tuple[Manifest, OutputLayout],
                                                                    client: redis.Redis, settings: Settings) -> None:
    manifest, _ = job
    sent = Sent()
    recovery = _recovery(client, settings.queue, sent)
    found = recovery.active_jobs(time.time())[0]
    report = ScanReport()
    recovery.heal(found, {manifest.job_id: {0, 1}}, 1000.0, report)
    recovery.heal(found, {manifest.job_id: {0, 1}}, 1000.0 + LEASE, report)
    assert report.healed == {manifest.job_id: [2]}


def test_a_long_queue_is_read_to_its_end(client: redis.Redis, queue_name: str) -> None:
    messages = [json.dumps(_message("long-job", shard)) for shard in range(2 * SCAN_PAGE + 10)]
    client.rpush(queue_name, *messages)
    try:
        recovery = _recovery(client, queue_name, Sent())
        assert recovery.queued_shards()["long-job"] == set(range(2 * SCAN_PAGE + 10))
    finally:
        client.delete(queue_name)


def test_a_shard_that_comes_back_is_forgotten(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                              settings: Settings) -> None:
    manifest, layout = job
    job_id = manifest.job_id
    recovery = _recovery(client, settings.queue, Sent())
    now = time.time()
    queued = {job_id: {0}}
    job_found = recovery.active_jobs(now)[0]
    report = ScanReport()
    recovery.heal(job_found, queued, now, report)
    assert sorted(client.hkeys(UNSEEN_PREFIX + job_id)) == [b"1", b"2"]
    assert float(client.hget(UNSEEN_PREFIX + job_id, "1") or 0) == now
    client.set(lease_key(job_id, 1), "alive/1", px=60_000)  # a worker took it
    client.sadd(running_key(job_id), 2)
    recovery.heal(job_found, queued, now + 1, report)
    assert client.hgetall(UNSEEN_PREFIX + job_id) == {}
    assert report.healed == {}


def test_a_heal_that_cannot_send_keeps_the_shard_unseen(job: tuple[Manifest, OutputLayout], client: redis.Redis,
                                                        settings: Settings) -> None:
    manifest, _ = job
    sent = Sent()
    sent.fail = True
    recovery = _recovery(client, settings.queue, sent)
    found = recovery.active_jobs(time.time())[0]
    report = ScanReport()
    recovery.heal(found, {}, 100.0, report)
    recovery.heal(found, {}, 100.0 + LEASE, report)
    assert report.healed == {} and len(client.hkeys(UNSEEN_PREFIX + manifest.job_id)) == SHARDS


def test_messages_are_found_in_queues_bound_queues_and_the_unacked_hash(job: tuple[Manifest, OutputLayout],
                                                                        client: redis.Redis,
                                                                        settings: Settings) -> None:
    manifest, _ = job
    job_id = manifest.job_id
    bound = f"{settings.queue}-bound"
    binding = f"{KOMBU_BINDINGS}{settings.queue}-exchange"
    tag = f"test-{uuid.uuid4().hex}"
    client.sadd(binding, f"{bound}{routing.KOMBU_SEPARATOR}{routing.KOMBU_SEPARATOR}{bound}")
    client.lpush(settings.queue, json.dumps(_message(job_id, 0)), b"not json", json.dumps(_message(job_id, 9, "other")))
    client.lpush(routing.queue_keys(bound)[3], json.dumps(_message(job_id, 1, encoded=False)))
    client.hset(UNACKED_KEY, tag, json.dumps([_message(job_id, 2), "", settings.queue]))
    try:
        recovery = _recovery(client, settings.queue, Sent())
        assert recovery.queued_shards()[job_id] == {0, 1, 2}
        lists = recovery.queue_lists()
        assert settings.queue in lists and routing.queue_keys(bound)[3] in lists
        assert routing.queue_keys(bound)[0] not in lists  # only lists that exist
    finally:
        client.hdel(UNACKED_KEY, tag)
        client.delete(binding, *routing.queue_keys(bound))


def test_shard_of_reads_only_the_shard_task() -> None:
    assert shard_of(_message("j", 3)) == ("j", 3)
    assert shard_of(_message("j", 4, encoded=False)) == ("j", 4)
    assert shard_of([_message("j", 5), "", "q"], unacked=True) == ("j", 5)
    assert shard_of(_message("j", 3, "other.task")) is None
    assert shard_of({"headers": {}}) is None and shard_of(None) is None and shard_of("text") is None
    assert shard_of({"headers": {"task": TASK_NAME}, "body": "[]"}) is None
    plain = _message("j", 6, encoded=False)
    del plain["properties"]
    assert shard_of(plain) == ("j", 6)
