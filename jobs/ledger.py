"""A job's ledger on the broker's Redis: which shards are committed, with running totals.

The commit markers in the output stay the durable truth; the ledger is a cheap,
atomic count of them, so that neither a commit nor ``status`` has to list and read
every marker. Its keys (every Redis key is listed in :mod:`jobs.protocol`):

    batchformers:ledger:<job>            HASH  generation (the manifest's created_at), shards,
                                               committed, rows, errors, first_start, last_commit,
                                               finished_at
    batchformers:ledger:<job>:committed  SET   shard numbers that have a commit marker
    batchformers:ledger:<job>:unread     SET   committed shards whose marker was listed but not
                                               read (after a rebuild): their rows and errors
                                               are not in the totals yet
    batchformers:ledger:<job>:failed     HASH  shard -> error, failed for good (until retried)
    batchformers:ledger:<job>:running    SET   shards a worker has started (checked against leases)

Only a shard's first commit counts (``SADD`` says whether it is new), so a shard
committed twice, or a redelivered message, never counts twice. The ledger belongs to
one submission of the job: its ``generation`` is the manifest's ``created_at``, so a
ledger left from an earlier output of the same job id (deleted and submitted again)
is never trusted. When the ledger is missing (never written, expired, or Redis lost
it), :func:`rebuild` recreates it from the names of the markers, without reading
them; their totals are read later, once, by whoever needs them (``status``), and the
commit that completes the job reads every marker anyway before writing ``_SUCCESS``.

Once a job is complete its keys expire after ``retention`` seconds, so Redis does not
grow with every job ever run; the job index entry stays, so ``jobs`` still lists it.
This module imports no Celery: the producer and the worker both use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from jobs.broker import text
from jobs.protocol import ledger_keys as job_keys
from jobs.protocol import status_record_key

ACTIVE_SECONDS = 14 * 24 * 3600  # an unfinished job's ledger lives this long after its last change
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600  # a finished job's broker state lives this long
MISSING = -1


def _add_totals(rows: int, errors: int, started: int, committed_at: int, truncated: int) -> str:
    """Lua adding one marker's totals to the job's hash; the numbers are the marker's ARGV positions."""
    return f"""
redis.call('HINCRBY', KEYS[1], 'rows', ARGV[{rows}])
redis.call('HINCRBY', KEYS[1], 'errors', ARGV[{errors}])
redis.call('HINCRBY', KEYS[1], 'truncated', ARGV[{truncated}])
local first = tonumber(redis.call('HGET', KEYS[1], 'first_start'))
if first == nil or tonumber(ARGV[{started}]) < first then redis.call('HSET', KEYS[1], 'first_start', ARGV[{started}]) end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_commit'))
if last == nil or tonumber(ARGV[{committed_at}]) > last then
    redis.call('HSET', KEYS[1], 'last_commit', ARGV[{committed_at}])
end
"""


# KEYS: hash, committed, unread, failed, running
# ARGV: generation, shards, shard, rows, errors, started, committed_at, ttl, truncated
# Returns {fresh, committed count}: fresh is 1 for the first commit of the shard, MISSING without a ledger.
_RECORD = """
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return {-1, 0} end
local added = redis.call('SADD', KEYS[2], ARGV[3])
local fresh = added == 1 or redis.call('SREM', KEYS[3], ARGV[3]) == 1
if fresh then
""" + _add_totals(rows=4, errors=5, started=6, committed_at=7, truncated=9) + """
end
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('SREM', KEYS[5], ARGV[3])
local count = redis.call('SCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'committed', count)
if redis.call('HEXISTS', KEYS[1], 'finished_at') == 0 then
    for i = 1, 5 do redis.call('EXPIRE', KEYS[i], ARGV[8]) end
end
return {fresh and 1 or 0, count}
"""

# KEYS: hash, committed, unread, failed, running; ARGV: generation, shards, ttl, then committed shards.
# A ledger of another generation is wiped first; shards already known are left alone.
_REBUILD = """
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])  -- running shards are checked against leases
    redis.call('HSET', KEYS[1], 'generation', ARGV[1], 'shards', ARGV[2], 'rows', 0, 'errors', 0)
end
for i = 4, #ARGV do
    if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then redis.call('SADD', KEYS[3], ARGV[i]) end
end
local count = redis.call('SCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'committed', count)
for i = 1, 5 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return count
"""

# Fold in the totals of one unread marker (once: whoever removes it from `unread` adds it).
# KEYS: hash, unread; ARGV: generation, shard, rows, errors, started, committed_at, truncated
_ABSORB = """
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return 0 end
if redis.call('SREM', KEYS[2], ARGV[2]) == 0 then return 0 end
""" + _add_totals(rows=3, errors=4, started=5, committed_at=6, truncated=7) + """
return 1
"""


def generation_of(created_at: float) -> str:
    """The manifest's submit time, as the ledger stores it."""
    return repr(float(created_at))


def marker_times(marker: dict[str, Any]) -> tuple[float, float]:
    """(when the shard's run started, when it was committed), from its commit marker."""
    committed_at = float(marker.get("committed_at", 0.0))
    return committed_at - float(marker.get("seconds", 0.0)), committed_at


@dataclass(frozen=True)
class Tally:
    """What the ledger knows of a job: counts, totals and the time span of its commits."""

    shards: int
    committed: set[int]
    unread: set[int]
    failed: dict[int, str]
    running: set[int]
    rows: int
    errors: int
    first_start: float | None
    last_commit: float | None
    finished_at: float | None = None
    truncated: int = 0


class Ledger:
    """The ledger of one submission of a job (``generation``: its manifest's ``created_at``)."""

    def __init__(self, client: redis.Redis, job_id: str, shards: int, created_at: float, *,
                 retention: float = DEFAULT_RETENTION_SECONDS, active_seconds: int = ACTIVE_SECONDS) -> None:
        self.client = client
        self.job_id = job_id
        self.shards = shards
        self.generation = generation_of(created_at)
        self.keys = job_keys(job_id)
        self.retention = max(1, int(retention))
        self.active_seconds = active_seconds

    @classmethod
    def for_manifest(cls, client: redis.Redis, manifest: Any, retention: float = DEFAULT_RETENTION_SECONDS) -> Ledger:
        return cls(client, manifest.job_id, len(manifest.shards), manifest.created_at, retention=retention)

    def record_commit(self, shard: int, marker: dict[str, Any]) -> tuple[bool, int] | None:
        """Count a committed shard and take it off the running set (and the failed one); (first commit?,
        shards committed), or None without a ledger."""
        started, committed_at = marker_times(marker)
        fresh, count = self.client.eval(
            _RECORD, len(self.keys), *self.keys, self.generation, self.shards, shard,
            int(marker.get("rows", 0)), int(marker.get("errors", 0)), repr(started), repr(committed_at),
            self.active_seconds, int(marker.get("truncated") or 0))
        if int(fresh) == MISSING:
            return None
        return bool(fresh), int(count)

    def rebuild(self, committed: Iterable[int]) -> int:
        """(Re)create the ledger from the committed shards' numbers (marker names, unread)."""
        count = self.client.eval(_REBUILD, len(self.keys), *self.keys, self.generation, self.shards,
                                 self.active_seconds, *sorted(set(committed)))
        return int(count)

    def absorb(self, shard: int, marker: dict[str, Any]) -> bool:
        """Add an unread marker's rows and errors to the totals; True for the one caller that did."""
        started, committed_at = marker_times(marker)
        done = self.client.eval(_ABSORB, 2, self.keys[0], self.keys[2], self.generation, shard,
                                int(marker.get("rows", 0)), int(marker.get("errors", 0)), repr(started),
                                repr(committed_at), int(marker.get("truncated") or 0))
        return bool(done)

    def record_failure(self, shard: int, error: str) -> None:
        """The shard failed for good (its failure marker is written)."""
        pipe = self.client.pipeline()
        pipe.hset(self.keys[3], str(shard), error)
        pipe.expire(self.keys[3], self.active_seconds)
        pipe.srem(self.keys[4], str(shard))
        pipe.execute()

    def forget_failure(self, shards: Iterable[int]) -> None:
        wanted = [str(s) for s in shards]
        if wanted:
            self.client.hdel(self.keys[3], *wanted)

    def started(self, shard: int) -> None:
        """A worker took the shard's lease and runs it (``status`` checks the lease still exists)."""
        pipe = self.client.pipeline()
        pipe.sadd(self.keys[4], str(shard))
        pipe.expire(self.keys[4], self.active_seconds)
        pipe.hdel(self.keys[3], str(shard))
        pipe.execute()

    def stopped(self, shard: int) -> None:
        self.client.srem(self.keys[4], str(shard))

    def exists(self) -> bool:
        value = self.client.hget(self.keys[0], "generation")
        return (value.decode() if isinstance(value, bytes) else value) == self.generation

    def read(self) -> Tally | None:
        """The job's tally, or None when there is no ledger of this generation."""
        pipe = self.client.pipeline()
        pipe.hgetall(self.keys[0])
        pipe.smembers(self.keys[1])
        pipe.smembers(self.keys[2])
        pipe.hgetall(self.keys[3])
        pipe.smembers(self.keys[4])
        values, committed, unread, failed, running = pipe.execute()
        fields = {text(k): text(v) for k, v in values.items()}
        if fields.get("generation") != self.generation:
            return None
        return Tally(
            shards=int(fields.get("shards", self.shards)),
            committed={int(s) for s in committed},
            unread={int(s) for s in unread},
            failed={int(k): text(v) for k, v in failed.items()},
            running={int(s) for s in running},
            rows=int(fields.get("rows", 0)),
            errors=int(fields.get("errors", 0)),
            first_start=_number(fields.get("first_start")),
            last_commit=_number(fields.get("last_commit")),
            finished_at=_number(fields.get("finished_at")),
            truncated=int(fields.get("truncated", 0)),
        )

    def finish(self, finished_at: float) -> None:
        """The job is complete: its ledger expires after the retention period.

        Its other broker state is gone already or expires by itself: a commit deletes the
        shard's delivery count, leases live one lease, task results ``result_expires``.
        """
        pipe = self.client.pipeline()
        pipe.hset(self.keys[0], "finished_at", repr(finished_at))
        for key in [*self.keys, status_record_key(self.job_id)]:  # the status record lives as long
            pipe.expire(key, self.retention)
        pipe.execute()

    def drop(self) -> None:
        self.client.delete(*self.keys)



def _number(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)  # type: ignore[arg-type]
