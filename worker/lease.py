"""Shard leases: at most one live run of a shard, and a bound on how long a dead worker's shard waits.

How the timers relate, for ``lease_seconds`` = L (``BATCHFORMERS_LEASE_SECONDS``, default 20)
and a shard time limit T (the spec's ``shard_time_limit``, else ``BATCHFORMERS_SHARD_TIME_LIMIT``):

- **Lease (L).** While a shard runs, a heartbeat thread in the worker process keeps the Redis key
  ``batchformers:lease:<job>:<shard>`` holding the worker's identity, with a TTL of L, refreshed
  every L/3. A process that dies (SIGKILL, OOM killer, machine gone) stops refreshing, so its
  lease is gone at most L later.
- **Takeover (L/4).** Every worker's main process, a waiting ``run --broker`` and ``status
  --watch`` scan the jobs' running entries every L/4 (:mod:`jobs.recovery`, :mod:`worker.recovery_scans`):
  a running shard whose lease has expired and that is not committed lost its holder, and gets one
  new message (a ``SET NX`` lock per shard and start count lets one scanner send it). The same
  scans re-enqueue shards whose message the broker lost (no message, lease or marker for a lease).
- **A delivery that finds a live lease held by someone else** neither runs the shard nor drops
  it: it retries itself (a new message, acked old one) once the lease's remaining time is up,
  without counting a delivery. When the holder finishes, the shard is committed and the copy
  is skipped; when the holder died, the lease has expired and the copy takes the shard over.
- **Visibility timeout (2L).** Redis does not know a consumer died: a message stays unacked
  until it is acked or, after the visibility timeout, put back in the queue by any live
  worker's restore sweep (every L/2 here, see :mod:`worker.app`). A prefork child that dies is
  noticed by its worker at once (the message is requeued immediately); a whole worker or
  machine that vanishes is noticed by the takeover scans, and its old message, restored after
  this timeout, finds the shard committed or leased. A shard that runs longer than 2L is
  redelivered while it still runs, and the lease is what stops it running twice: long shards
  are safe whatever their length.
- **Time limits (T).** Each task is sent with ``soft_time_limit=T`` and ``time_limit=T + grace``.
  At T the shard gets ``SoftTimeLimitExceeded`` and counts as a failed attempt (retried with
  backoff, then marked failed); at T + grace the worker kills the process and requeues the
  message, which the delivery count (:mod:`worker.deliveries`) then bounds. T bounds how long
  a hung shard holds a worker; it is independent of L, which only bounds how long a dead
  worker's shard waits. T counts from the task's start, so on a worker's first shard it
  includes loading the model: leave room for that.

Recovery therefore takes at most about L + L/4 after a worker process or a whole worker or
machine dies (25 s by default, plus the new worker's model load), and never a Redis-default hour.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from jobs.broker import TIMEOUT, client
from jobs.protocol import LEASE_PREFIX, lease_key

log = logging.getLogger(__name__)
KEY_PREFIX = LEASE_PREFIX  # every Redis key of a job is listed in jobs.protocol
HEARTBEATS_PER_LEASE = 3
MIN_WAIT = 1.0

# SET-if-ours-or-free with a TTL, atomically: 1 when we hold the lease afterwards, else 0.
_TAKE_OR_REFRESH = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

_clients: dict[str, redis.Redis] = {}


def client_for(url: str) -> redis.Redis:
    """One Redis client per broker URL and process (created after the fork)."""
    key = f"{os.getpid()}:{url}"
    if key not in _clients:
        _clients[key] = client(url, TIMEOUT, health_check_interval=30)
    return _clients[key]


def worker_identity(hostname: str | None = None) -> str:
    """Who holds a lease: the Celery node name (or host) and the process id."""
    return f"{hostname or socket.gethostname()}/{os.getpid()}"


class ShardLease:
    """The lease on one shard, held by ``holder`` for ``seconds`` at a time."""

    def __init__(self, client: redis.Redis, job_id: str, shard: int, holder: str, seconds: float,
                 key: str | None = None) -> None:
        self.client = client
        self.key = key or lease_key(job_id, shard)  # a speculative copy's lease has its own key
        self.holder = holder
        self.seconds = seconds
        self.lost = False

    def acquire(self) -> bool:
        """Take the lease if it is free (or already ours); False while another worker holds it."""
        return self._take_or_refresh()

    def held(self) -> bool:
        """Refresh the lease and say whether it is still ours (checked before committing).

        A broker that does not answer raises ``redis.RedisError``: a lease that cannot be
        confirmed is not held (a worker paused past its lease may have been replaced, and its
        shard committed and compacted since), so the shard is not committed but given back."""
        if self.lost:
            return False
        try:
            self.lost = not self._take_or_refresh()
            return not self.lost
        except redis.RedisError as exc:
            log.warning("cannot confirm lease %s (%s); not committing, the shard runs again later", self.key, exc)
            raise

    def current_holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def wait_hint(self) -> float:
        """Seconds until another holder's lease would expire if it stopped refreshing it."""
        remaining_ms = self.client.pttl(self.key)
        remaining = remaining_ms / 1000 if remaining_ms and remaining_ms > 0 else 0.0
        return max(MIN_WAIT, min(self.seconds, remaining + 0.5))

    def release(self) -> None:
        try:
            self.client.eval(_RELEASE, 1, self.key, self.holder)
        except redis.RedisError as exc:
            log.warning("cannot release lease %s (%s); it expires in %.0fs", self.key, exc, self.seconds)

    @contextmanager
    def kept(self) -> Iterator[None]:
        """Refresh the lease from a background thread while the body runs."""
        stop = threading.Event()
        thread = threading.Thread(target=self._heartbeat, args=(stop,), name=f"lease-{self.key}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=self.seconds)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.seconds / HEARTBEATS_PER_LEASE):
            try:
                if not self._take_or_refresh() and not self.lost:
                    self.lost = True
                    log.error("lease %s was taken over by %s; this run will not commit", self.key,
                              self.current_holder())
            except redis.RedisError as exc:  # the broker may be restarting: keep trying
                log.warning("cannot refresh lease %s: %s", self.key, exc)

    def _take_or_refresh(self) -> bool:
        taken: Any = self.client.eval(_TAKE_OR_REFRESH, 1, self.key, self.holder, int(self.seconds * 1000))
        return bool(taken)
