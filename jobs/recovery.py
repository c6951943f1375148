"""Takeover and self-healing: a shard that nobody will run again gets one new message.

Two ways a shard can stall with nothing left to move it:

- **Its worker died** (SIGKILL, OOM killer, machine gone). Its message stays unacked until
  the broker's visibility timeout; but its lease (:mod:`worker.lease`) stops being refreshed
  and expires within a lease. :meth:`Recovery.take_over` finds the job's running entries
  (:mod:`jobs.ledger`) whose lease is gone and re-enqueues each such shard at once.
- **Its message is lost** (the broker restarted without persistence, was flushed, a queue
  or message deleted by hand). :meth:`Recovery.heal` finds shards that have no commit or
  failure marker, no message in any queue nor in the broker's unacked hash, no lease and no
  running entry, on two looks at least a lease apart, and re-enqueues them.

Each re-enqueue is claimed first with a Redis ``SET NX`` lock per shard and start count
(``batchformers:requeue:<job>:<shard>:<starts>``), so of all the processes scanning (every
worker, a waiting ``run --broker``, ``status --watch``) exactly one sends it. Exactly-once
output is still the lease's and the commit marker's job: the dead worker's unacked message
comes back after the visibility timeout as well, and finds the shard committed or leased.
Looking for lost messages reads every queue, so one process a period does it
(``batchformers:heal-scan``); the takeover check is a few Redis calls per job.

No Celery here: the caller passes ``send(manifest, layout, shards)``, which enqueues the
shards the way a submit does (:func:`jobs.dispatch.resend`).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from jobs import routing
from jobs.broker import text
from jobs.errors import BatchformersError
from jobs.io.layout import OutputLayout
from jobs.ledger import ACTIVE_SECONDS
from jobs.manifest import Manifest
from jobs.protocol import (
    HEAL_SCAN_KEY,
    JOB_QUEUES_KEY,
    JOBS_KEY,
    TASK_NAME,
    UNSEEN_PREFIX,
    deliveries_key,
    job_index_key,
    lease_key,
    requeue_key,
    running_key,
)

log = logging.getLogger(__name__)
Send = Callable[[Manifest, OutputLayout, set[int], str], int]
"""Enqueue these shards of the job on that queue; returns how many messages were sent."""

SCANS_PER_LEASE = 4  # the takeover check runs every lease / 4: a dead holder's shard waits at most 1.25 leases
HEAL_SCANS_PER_LEASE = 2  # one process looks for lost messages every lease / 2
LOCK_LEASES = 3  # a claim expires after this many leases: a message lost again is sent again after that
KOMBU_BINDINGS = "_kombu.binding."  # kombu's Redis transport: one set per exchange, members name the queues
UNACKED_KEY = "unacked"  # kombu's hash of delivered, not yet acked messages
SCAN_PAGE = 1000  # queued messages read per LRANGE (and unacked ones per HSCAN) by the lost-message scan
UNREADABLE_BACKOFF_LEASES = 5  # an output that cannot be read (deleted, unreachable) is looked at again after this


# KEYS: lease, lock, running; ARGV: holder of the lock, its ttl (ms), shard.
# The lease must still be gone when the lock is taken, so a shard that a worker has just
# started is never taken from it.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SREM', KEYS[3], ARGV[3])
return 1
"""


@dataclass
class ScanReport:
    """What one scan did: shards re-enqueued, by job."""

    taken_over: dict[str, list[int]] = field(default_factory=dict)
    healed: dict[str, list[int]] = field(default_factory=dict)
    healing_checked: bool = False


@dataclass
class _Job:
    manifest: Manifest
    layout: OutputLayout
    queue: str


class Recovery:
    """Scans the jobs sent to ``queue`` that the broker knows (and ``outputs``) for shards to re-enqueue.

    Only jobs of our own queue: a worker takes over the shards it would have been given, and
    never runs another queue's (another team's, another test's) jobs.
    """

    def __init__(self, client: redis.Redis, send: Send, lease_seconds: float, queue: str, *,
                 outputs: Iterable[str] = (), identity: str = "") -> None:
        self.client = client
        self.send = send
        self.lease_seconds = lease_seconds
        self.queue = queue
        self.outputs = list(outputs)
        self.identity = identity or "scanner"
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._finished: set[tuple[str, str]] = set()
        self._unreadable: dict[tuple[str, str], float] = {}  # output -> when to try reading it again
        self.speculation: Any = None  # a jobs.speculation.Speculation: copies of stragglers (workers' scans)

    @property
    def interval(self) -> float:
        """Seconds between two takeover checks."""
        return self.lease_seconds / SCANS_PER_LEASE

    def scan(self, now: float | None = None) -> ScanReport:
        """One look: take over the shards of dead holders; look for lost messages when it is our turn."""
        now = time.time() if now is None else now
        report = ScanReport()
        jobs = self.active_jobs(now)
        for job in jobs:
            try:
                self.take_over(job, report)
                if self.speculation is not None:
                    self.speculation.check(job.manifest, job.layout, job.queue, now)
            except (OSError, redis.RedisError) as exc:
                log.warning("recovery: cannot check the running shards of job %s now: %s", job.manifest.job_id, exc)
        if jobs and self._heal_turn():
            report.healing_checked = True
            queued = self.queued_shards([routing.job_queue(job.queue, job.manifest.job_id) for job in jobs])
            for job in jobs:
                try:
                    self.heal(job, queued, now, report)
                except (OSError, redis.RedisError) as exc:
                    log.warning("recovery: cannot look for lost shards of job %s now: %s", job.manifest.job_id, exc)
        return report

    # -- which jobs ---------------------------------------------------------------

    def active_jobs(self, now: float) -> list[_Job]:
        """Unfinished, uncancelled jobs of our queue submitted in the last ACTIVE_SECONDS, and ``outputs``."""
        ids = [text(job) for job in self.client.zrangebyscore(JOBS_KEY, now - ACTIVE_SECONDS, "+inf")]
        pipe = self.client.pipeline()
        pipe.mget([job_index_key(job) for job in ids] or ["-"])
        pipe.hmget(JOB_QUEUES_KEY, ids or ["-"])
        outputs, queues = pipe.execute()
        wanted: list[tuple[str | None, str]] = [(job, text(output)) for job, output, queue in zip(ids, outputs, queues, strict=False)
                  if output is not None and queue is not None and text(queue) == self.queue]
        wanted += [(None, output) for output in self.outputs]
        found: dict[str, _Job] = {}
        for job_id, output in wanted:
            job = self._job(job_id, output)
            if job is not None and job.manifest.job_id not in found:
                found[job.manifest.job_id] = job
        return list(found.values())

    def _job(self, job_id: str | None, output: str) -> _Job | None:
        key = (job_id or "", output)
        if key in self._finished or self._unreadable.get(key, 0.0) > time.monotonic():
            return None
        try:
            job = self._jobs.get(key)
            if job is None:
                layout = OutputLayout(output)
                manifest = layout.read_manifest()
                if job_id is not None and manifest.job_id != job_id:  # the output now holds another job
                    self._finished.add(key)
                    return None
                queue = self.client.hget(JOB_QUEUES_KEY, manifest.job_id)
                job = self._jobs[key] = _Job(manifest, layout, self.queue if queue is None else text(queue))
            if job.layout.is_finished():
                self._finished.add(key)
                self._jobs.pop(key, None)
                return None
            return None if job.layout.is_cancelled() else job
        except (BatchformersError, OSError, ValueError, KeyError) as exc:  # gone, or unreachable for now
            log.debug("recovery: cannot read the job at %s: %s", output, exc)
            self._unreadable[key] = time.monotonic() + UNREADABLE_BACKOFF_LEASES * self.lease_seconds
            return None

    # -- dead holders -----------------------------------------------------------------

    def take_over(self, job: _Job, report: ScanReport) -> None:
        """Re-enqueue the running shards of ``job`` whose lease has expired (their holder died)."""
        job_id = job.manifest.job_id
        running = sorted(int(s) for s in self.client.smembers(running_key(job_id)))
        if not running:
            return
        pipe = self.client.pipeline()
        for shard in running:
            pipe.exists(lease_key(job_id, shard))
        dead = [shard for shard, alive in zip(running, pipe.execute(), strict=True) if not alive]
        if not dead:
            return
        committed, failed = job.layout.marker_numbers()
        settled = [shard for shard in dead if shard in committed or shard in failed]
        if settled:  # its holder died after the marker: nothing to run
            self.client.srem(running_key(job_id), *settled)
        claimed = self._claim(job_id, [s for s in dead if s not in settled])
        if claimed and self._send(job, claimed):
            report.taken_over[job_id] = sorted(claimed)
            log.warning("batchformers: took over shard(s) %s of job %s: their worker stopped renewing the lease "
                        "(killed or lost); re-enqueued", _ranges(claimed), job_id)

    # -- lost messages -----------------------------------------------------------------

    def heal(self, job: _Job, queued: dict[str, set[int]], now: float, report: ScanReport) -> None:
        """Re-enqueue the shards of ``job`` found nowhere on two looks at least a lease apart."""
        job_id = job.manifest.job_id
        committed, failed = job.layout.marker_numbers()
        candidates = sorted(set(range(len(job.manifest.shards))) - committed - failed - queued.get(job_id, set()))
        unseen_key = UNSEEN_PREFIX + job_id
        pipe = self.client.pipeline()
        for shard in candidates:
            pipe.exists(lease_key(job_id, shard))
        pipe.smembers(running_key(job_id))
        pipe.hgetall(unseen_key)
        *alive, running, seen = pipe.execute()
        running_now = {int(s) for s in running}
        nowhere = {shard for shard, leased in zip(candidates, alive, strict=True)
                   if not leased and shard not in running_now}
        first_seen = {int(k): float(v) for k, v in seen.items()}
        pipe = self.client.pipeline()
        back = [shard for shard in first_seen if shard not in nowhere]
        if back:
            pipe.hdel(unseen_key, *map(str, back))
        new = {shard: repr(now) for shard in nowhere if shard not in first_seen}
        if new:
            pipe.hset(unseen_key, mapping=new)  # type: ignore[arg-type]
            pipe.expire(unseen_key, ACTIVE_SECONDS)
        pipe.execute()
        due = [shard for shard in sorted(nowhere) if now - first_seen.get(shard, now) >= self.lease_seconds]
        claimed = self._claim(job_id, due)
        if claimed and self._send(job, claimed):
            self.client.hdel(unseen_key, *map(str, claimed))
            report.healed[job_id] = sorted(claimed)
            log.warning("batchformers: re-enqueued shard(s) %s of job %s: no message, lease or marker of them "
                        "was found for %.0fs (the broker lost its queue?)", _ranges(claimed), job_id,
                        self.lease_seconds)

    def queued_shards(self, job_queues: Iterable[str] = ()) -> dict[str, set[int]]:
        """Job id -> shards with a message waiting in a queue or delivered and not yet acked.

        ``job_queues`` are the jobs' own queues (:mod:`jobs.routing`), looked in whether or not
        kombu has bound them yet."""
        found: dict[str, set[int]] = {}
        for _, raw in self.client.hscan_iter(UNACKED_KEY, count=SCAN_PAGE):  # [message, exchange, routing key]
            _add(found, shard_of(_loads(raw), unacked=True))
        for queue in self.queue_lists(job_queues):
            for raw in self.queued(queue):
                _add(found, shard_of(_loads(raw)))
        return found

    def queued(self, queue: str) -> Iterator[bytes]:
        """The messages of one queue list, ``SCAN_PAGE`` at a time: a backlog of millions is never read at once.
        Kombu pushes on the left and takes from the right, so paging from the left misses no message that
        stays queued (a push shifts the rest right: some are seen twice, which a set does not mind)."""
        start = 0
        while True:
            page = self.client.lrange(queue, start, start + SCAN_PAGE - 1)
            yield from page
            if len(page) < SCAN_PAGE:
                return
            start += SCAN_PAGE

    def queue_lists(self, job_queues: Iterable[str] = ()) -> list[str]:
        """Every list kombu keeps messages in: the known queues, those bound on the broker, each priority."""
        names = {self.queue, *job_queues}
        for key in self.client.scan_iter(match=KOMBU_BINDINGS + "*", count=1000):
            for member in self.client.smembers(key):
                names.add(text(member).split(routing.KOMBU_SEPARATOR)[-1])
        lists = [key for name in sorted(names) for key in routing.queue_keys(name)]
        pipe = self.client.pipeline()
        for name in lists:
            pipe.exists(name)
        return [name for name, there in zip(lists, pipe.execute(), strict=True) if there]

    # -- claims ---------------------------------------------------------------------

    def _heal_turn(self) -> bool:
        period = int(self.lease_seconds / HEAL_SCANS_PER_LEASE * 1000)
        return bool(self.client.set(HEAL_SCAN_KEY, self.identity, nx=True, px=max(1, period)))

    def _claim(self, job_id: str, shards: list[int]) -> set[int]:
        """The shards of ``shards`` whose re-enqueue this process won (one lock per shard and start count)."""
        if not shards:
            return set()
        starts = self.client.mget([deliveries_key(job_id, shard) for shard in shards])
        ttl = int(self.lease_seconds * LOCK_LEASES * 1000)
        claimed = set()
        for shard, count in zip(shards, starts, strict=True):
            keys = [lease_key(job_id, shard), requeue_key(job_id, shard, text(count or 0)), running_key(job_id)]
            if self.client.eval(_CLAIM, 3, *keys, self.identity, ttl, shard):
                claimed.add(shard)
        return claimed

    def _send(self, job: _Job, shards: set[int]) -> bool:
        try:
            self.send(job.manifest, job.layout, shards, job.queue)
            return True
        except Exception as exc:  # noqa: BLE001 - the broker may be down: the claims expire, a later scan retries
            log.warning("recovery: cannot re-enqueue shards %s of job %s: %s", _ranges(shards),
                        job.manifest.job_id, exc)
            return False


def shard_of(message: Any, unacked: bool = False) -> tuple[str, int] | None:
    """(job id, shard) of a kombu message of the shard task; None for anything else."""
    try:
        if unacked:
            message = message[0]
        if message["headers"]["task"] != TASK_NAME:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]["job_id"]), int(args[0]["shard"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def _loads(raw: Any) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _add(found: dict[str, set[int]], item: tuple[str, int] | None) -> None:
    if item is not None:
        found.setdefault(item[0], set()).add(item[1])



def _ranges(shards: Iterable[int]) -> str:
    return ", ".join(str(s) for s in sorted(shards))
