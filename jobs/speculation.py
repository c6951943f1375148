"""Stragglers: an idle worker starts a copy of a shard that runs far longer than its job's typical one.

A job's wall time is set by its slowest shard; a slow machine, a noisy neighbour or a throttled GPU
makes one shard run many times longer than the rest. Once the job's queue is empty, every idle
worker's scan (:mod:`worker.recovery_scans`, beside the takeover check) looks at the job's running shards:
one running more than ``FACTOR`` times the median seconds of its committed shards, and more than
``BATCHFORMERS_SPECULATE_AFTER_SECONDS``, gets one copy (a ``SET NX`` lock per shard lets one scanner
send it, once), a message marked ``copy`` on the job's queue.

The copy runs beside the holder under a lease of its own (``batchformers:copy-lease:<job>:<shard>``),
counts no attempt and never fails the shard. Both commit through the same pieces
(:mod:`jobs.io.pieces`): each piece's claim is created once, so the first to claim a piece wins it and
the other follows; the first to write the shard's marker completes it, and the other stops at its next
piece (the marker is checked before each commit) without committing a row twice. The copy starts after
the holder's last committed piece, not at row 0. No Celery here: the caller sends the copies.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from jobs import routing
from jobs.ledger import ACTIVE_SECONDS
from jobs.protocol import COPIES_PREFIX, COPY_PREFIX, SINCE_PREFIX, copy_lease_key, running_key

if TYPE_CHECKING:  # ``status`` counts copies without importing the output's storage
    from jobs.io.layout import OutputLayout
    from jobs.manifest import Manifest

log = logging.getLogger(__name__)
FACTOR = 2.0  # a shard is a straggler past this many times its job's median shard
MIN_COMMITTED = 2  # committed shards a median needs
SendCopies = Callable[["Manifest", "OutputLayout", set[int], str], int]


def started(client: redis.Redis, job_id: str, shard: int, now: float | None = None) -> None:
    """The holder's run of ``shard`` starts now (a copy's start is not recorded)."""
    pipe = client.pipeline()
    pipe.hset(SINCE_PREFIX + job_id, str(shard), repr(time.time() if now is None else now))
    pipe.expire(SINCE_PREFIX + job_id, ACTIVE_SECONDS)
    pipe.execute()


def copies(client: redis.Redis, job_id: str) -> int:
    """How many copies of the job's shards were started (``status`` shows it)."""
    return sum(int(count) for count in client.hvals(COPIES_PREFIX + job_id))


class Speculation:
    """Sends copies of a job's stragglers, from the scans of idle workers."""

    def __init__(self, client: redis.Redis, send: SendCopies, min_seconds: float, idle: Callable[[], bool]) -> None:
        self.client = client
        self.send = send
        self.min_seconds = min_seconds
        self.idle = idle
        self._seconds: dict[str, dict[int, float]] = {}  # job -> committed shard -> its seconds (markers never change)

    def check(self, manifest: Manifest, layout: OutputLayout, queue: str, now: float | None = None) -> list[int]:
        """Send a copy of each straggler of the job now due one; the shards copied."""
        now = time.time() if now is None else now
        job_id = manifest.job_id
        if not self.idle() or self._queued(queue, job_id):
            return []
        running = {int(s) for s in self.client.smembers(running_key(job_id))}
        if not running:
            return []
        threshold = self._threshold(layout, job_id)
        if threshold is None:
            return []
        since = {int(k): float(v) for k, v in self.client.hgetall(SINCE_PREFIX + job_id).items()}
        late = [shard for shard in sorted(running) if shard in since and now - since[shard] > threshold
                and shard not in self._seconds[job_id] and not self.client.exists(copy_lease_key(job_id, shard))]
        won = {shard for shard in late if self.client.set(f"{COPY_PREFIX}{job_id}:{shard}", "1", nx=True,
                                                          ex=ACTIVE_SECONDS)}
        if not won:
            return []
        self.send(manifest, layout, won, queue)
        pipe = self.client.pipeline()
        for shard in won:
            pipe.hincrby(COPIES_PREFIX + job_id, str(shard), 1)
        pipe.expire(COPIES_PREFIX + job_id, ACTIVE_SECONDS)
        pipe.execute()
        log.warning("batchformers: shard(s) %s of job %s run over %.0fs (%.0fx the job's median shard): started "
                    "a copy; the first to commit wins", sorted(won), job_id, threshold, FACTOR)
        return sorted(won)

    def _queued(self, queue: str, job_id: str) -> bool:
        """Whether a message of the job may still wait: its own queue's lists, or the base queue's."""
        lists = routing.queue_keys(routing.job_queue(queue, job_id)) + routing.queue_keys(queue)
        pipe = self.client.pipeline()
        for name in lists:
            pipe.llen(name)
        return any(int(length) for length in pipe.execute())

    def _threshold(self, layout: OutputLayout, job_id: str) -> float | None:
        """Seconds past which a running shard of the job is a straggler; None before enough shards committed."""
        known = self._seconds.setdefault(job_id, {})
        new = sorted(layout.marker_numbers()[0] - set(known))
        for shard, marker in layout.read_committed(new).items():
            known[shard] = float(marker.get("seconds") or 0.0) + float(marker.get("model_load_seconds") or 0.0)
        if len(known) < MIN_COMMITTED:
            return None
        return max(self.min_seconds, FACTOR * statistics.median(known.values()))

