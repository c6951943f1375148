"""What waits on the broker, per job: messages in each priority list of its queue, and its pending shards.

One reading for every view of the backlog: Flower's Broker page and ``/metrics`` (:mod:`worker.flower`)
take it from here, and the pending count is the one ``status`` and ``jobs`` show (:mod:`producer.status`):
shards neither committed, failed for good nor running, from the job's ledger (before its first
commit there is none: then the shard count comes from the job's manifest, read once).

A job is *live* while its queue holds messages or its ledger has no ``finished_at``; a finished
job with an empty queue is left out, so its queue disappears from the views when the job ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from jobs.protocol import job_index_key, ledger_keys
from jobs.routing import MAX_PRIORITY, Route, queue_keys, read_routes


@dataclass(frozen=True)
class JobBacklog:
    route: Route
    waiting: dict[int, int]  # spec priority (0-9, higher first) -> messages in its list
    pending: int | None  # None: the job has no ledger (yet, or any more)
    finished: bool

    @property
    def messages(self) -> int:
        return sum(self.waiting.values())

    @property
    def live(self) -> bool:
        return self.messages > 0 or not self.finished


def pending_shards(shards: int, committed: set[int], failed: set[int], running: set[int]) -> int:
    """Shards that wait for a worker: not committed, not failed for good, not running (as ``status`` counts)."""
    failed = failed - committed
    return max(0, shards - len(committed) - len(failed) - len(running - committed - failed))


_manifest_shards: dict[tuple[str, str], int] = {}


def manifest_shards(client: redis.Redis, job_id: str) -> int | None:
    """The job's shard count from its manifest (found through the job index); None when unreadable."""
    from jobs.io.layout import OutputLayout

    raw = client.get(job_index_key(job_id))
    if raw is None:
        return None
    output = raw.decode() if isinstance(raw, bytes) else str(raw)
    if (job_id, output) not in _manifest_shards:
        try:
            manifest = OutputLayout(output).read_manifest()
        except Exception:  # noqa: BLE001 - any store's error (a gone bucket, credentials) leaves the count unknown
            return None
        _manifest_shards[(job_id, output)] = len(manifest.shards)
    return _manifest_shards[(job_id, output)]


def read_backlog(client: redis.Redis, base: str) -> list[JobBacklog]:
    """Every announced job queue of ``base``, with its lists' lengths and the job's pending shards."""
    routes = sorted(read_routes(client, base).values(), key=lambda route: route.queue)
    pipe = client.pipeline()
    for route in routes:
        for key in queue_keys(route.queue):
            pipe.llen(key)
        ledger, committed, _unread, failed, running = ledger_keys(route.job_id)
        pipe.hmget(ledger, "shards", "finished_at")
        pipe.smembers(committed)
        pipe.hkeys(failed)
        pipe.smembers(running)
    replies = iter(pipe.execute())
    backlog = []
    for route in routes:
        # kombu's list for message priority s holds spec priority 9 - s (jobs.routing.message_priority)
        lengths = [next(replies) for _ in queue_keys(route.queue)]
        waiting = {MAX_PRIORITY - step: length for step, length in enumerate(lengths) if length}
        (shards, finished_at), committed_set, failed_keys, running_set = (next(replies) for _ in range(4))
        if shards is None and not finished_at:
            shards = manifest_shards(client, route.job_id)
        pending = None
        if shards is not None:
            pending = pending_shards(int(shards), {int(s) for s in committed_set}, {int(s) for s in failed_keys},
                                     {int(s) for s in running_set})
        backlog.append(JobBacklog(route=route, waiting=waiting, pending=pending, finished=finished_at is not None))
    return backlog
