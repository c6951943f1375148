"""What waits on the broker, per job: messages in each priority list of its queue, and its pending shards.

One reading for every view of the backlog: Flower's Broker page and ``/metrics`` (:mod:`worker.flower`)
take it from here, and the pending count is the one ``status`` and ``jobs`` show (:mod:`producer.status`):
shards neither committed, failed for good nor running, from the job's ledger (before its first
commit there is none: then the shard count comes from the job's manifest, read once).

A job is *live* while its queue holds messages or it is not over; a job is over when its ledger has
``finished_at``, when every shard is committed or failed for good, or when it was cancelled (its
``CANCELLED`` file, read only once its queue is empty). A job that is over and has an empty queue is
left out, so its queue disappears from the views when the job ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from jobs.protocol import MAX_PRIORITY, job_index_key, ledger_keys
from jobs.routing import Route, queue_keys, read_routes


@dataclass(frozen=True)
class JobBacklog:
    route: Route
    waiting: dict[int, int]  # spec priority (0-9, higher first) -> messages in its list
    pending: int | None  # None: the job has no ledger and its manifest cannot be read
    over: bool  # complete, every shard committed or failed, or cancelled


    @property
    def messages(self) -> int:
        return sum(self.waiting.values())

    @property
    def live(self) -> bool:
        return self.messages > 0 or not self.over


def pending_shards(shards: int, committed: set[int], failed: set[int], running: set[int]) -> int:
    """Shards that wait for a worker: not committed, not failed for good, not running (as ``status`` counts)."""
    failed = failed - committed
    return max(0, shards - len(committed) - len(failed) - len(running - committed - failed))


_manifest_shards: dict[tuple[str, str], int] = {}


def job_output(client: redis.Redis, job_id: str) -> str | None:
    raw = client.get(job_index_key(job_id))
    return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)


def cancelled(client: redis.Redis, job_id: str) -> bool:
    from jobs.io.layout import OutputLayout

    output = job_output(client, job_id)
    try:
        return output is not None and OutputLayout(output).is_cancelled()
    except Exception:  # noqa: BLE001 - any store's error: not known to be cancelled
        return False


def manifest_shards(client: redis.Redis, job_id: str) -> int | None:
    """The job's shard count from its manifest (found through the job index); None when unreadable."""
    from jobs.io.layout import OutputLayout

    output = job_output(client, job_id)
    if output is None:
        return None
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
        totals, committed_key, _unread, failed_key, running_key = ledger_keys(route.job_id)
        pipe.hmget(totals, "shards", "finished_at")
        pipe.smembers(committed_key)
        pipe.hkeys(failed_key)
        pipe.smembers(running_key)
    replies = iter(pipe.execute())
    backlog = []
    for route in routes:
        # kombu's list for message priority s holds spec priority 9 - s (jobs.routing.message_priority)
        lengths = [next(replies) for _ in queue_keys(route.queue)]
        waiting = {MAX_PRIORITY - step: length for step, length in enumerate(lengths) if length}
        (shards, finished_at), committed_set, failed_keys, running_set = (next(replies) for _ in range(4))
        if shards is None and not finished_at:
            shards = manifest_shards(client, route.job_id)
        committed, failed = {int(s) for s in committed_set}, {int(s) for s in failed_keys}
        running = {int(s) for s in running_set} - committed - failed
        pending = None if shards is None else pending_shards(int(shards), committed, failed, running)
        over = finished_at is not None or (pending == 0 and not running)
        if not over and not waiting:
            over = cancelled(client, route.job_id)
        backlog.append(JobBacklog(route=route, waiting=waiting, pending=pending, over=over))
    return backlog
