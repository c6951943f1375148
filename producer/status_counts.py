"""Where a job's counts come from, cheapest first (:func:`producer.status.job_status` asks in this order).

1. **The ledger** (:mod:`jobs.ledger`): the broker's Redis counts committed shards, rows,
   errors and the commits' time span as workers commit, and knows which shards are
   running (a set of started shards, each checked against its lease
   ``batchformers:lease:<job_id>:<shard>``). A refresh costs a few Redis calls and a few
   small reads of the output (manifest, cancel and interruption flags), whatever the job's
   size, or no read at all with the job's status record (:mod:`jobs.status_record`); failed
   shards are checked against their failure markers (a retry removes them, and their
   ledger entries with them).
2. **``_SUCCESS``** (or **``_FAILED``**) of a finished job whose ledger has expired: one read.
3. **The markers**: their names are listed and the markers read (only new ones, when a
   :class:`MarkerCache` is carried from one refresh to the next, as ``follow`` and
   ``wait`` do). This is the path without a broker, so ``status`` works from any machine
   that can read the output; running shards are then counted from the leases if the
   broker answers, and are unknown (``None``) rather than wrong if it does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from jobs import broker
from jobs.ledger import Ledger, Tally, marker_times
from jobs.protocol import LEASE_PREFIX, lease_key
from jobs.settings import Settings

if TYPE_CHECKING:  # the status record's path reads no output: no storage import
    from jobs.io.layout import OutputLayout
    from jobs.manifest import Manifest

MarkerCache = dict[int, dict[str, Any]]
"""Commit markers already read, by shard: markers never change once written."""


def broker_client(settings: Settings) -> redis.Redis:
    """The client a status read asks the broker with: a quick question, it goes on without an answer."""
    return broker.client(settings.broker_url, broker.QUICK_TIMEOUT)


def from_ledger(ledger: Ledger, layout: OutputLayout) -> Tally | None:
    """The ledger's tally, made whole: unread markers folded in once, stale failures and runs dropped."""
    tally = ledger.read()
    if tally is None:
        return None
    if tally.unread:  # a rebuilt ledger: read those markers once, for everyone after us
        for shard, marker in layout.read_committed(sorted(tally.unread)).items():
            ledger.absorb(shard, marker)
        tally = ledger.read() or tally
    failed = dict(tally.failed)
    if failed:  # `retry` and a resubmit remove failure markers: a shard without one is pending again
        gone = set(failed) - set(layout.read_failed(sorted(failed)))
        ledger.forget_failure(gone)
        failed = {k: v for k, v in failed.items() if k not in gone}
    return leased(ledger, tally, failed)


def leased(ledger: Ledger, tally: Tally, failed: dict[int, str]) -> Tally:
    """``tally`` with ``failed``, and its running shards those whose lease is still held: a worker that
    died leaves its entry, and its lease expires within a lease."""
    running = set(tally.running)
    if running:
        ordered = sorted(running)
        pipe = ledger.client.pipeline()
        for shard in ordered:
            pipe.exists(lease_key(ledger.job_id, shard))
        running = {shard for shard, alive in zip(ordered, pipe.execute(), strict=True) if alive}
    return Tally(shards=tally.shards, committed=tally.committed, unread=set(), failed=failed, running=running,
                 rows=tally.rows, errors=tally.errors, first_start=tally.first_start,
                 last_commit=tally.last_commit, finished_at=tally.finished_at, truncated=tally.truncated)


def from_completion(layout: OutputLayout, manifest: Manifest) -> tuple[Tally, str] | None:
    """A finished job's totals from its _SUCCESS (or _FAILED) marker, when it has one."""
    done, source = layout.completion(), "success"
    if done is None:
        done, source = layout.job_failure(), "failed"
    if done is None or int(done.get("shards", -1)) != len(manifest.shards):
        return None
    return Tally(shards=len(manifest.shards), committed=set(range(len(manifest.shards))), unread=set(), failed={},
                 running=set(), rows=int(done["rows"]), errors=int(done["errors"]),
                 first_start=done.get("first_start"), last_commit=done.get("last_commit", done.get("completed_at")),
                 finished_at=done.get("completed_at"), truncated=int(done.get("truncated") or 0)), source


def from_listing(layout: OutputLayout, manifest: Manifest, cache: MarkerCache | None = None) -> Tally:
    """Counts from the markers themselves: one listing, then a read of every marker not in ``cache``."""
    cache = {} if cache is None else cache
    committed_names, failed_names = layout.marker_numbers()
    cache.update(layout.read_committed(sorted(committed_names - set(cache))))
    markers = {shard: cache[shard] for shard in committed_names if shard in cache}
    failed = {k: str(v.get("error", "")) for k, v in layout.read_failed(sorted(failed_names - set(markers))).items()}
    times = [marker_times(m) for m in markers.values()]
    return Tally(shards=len(manifest.shards), committed=set(markers), unread=set(), failed=failed, running=set(),
                 rows=sum(int(m["rows"]) for m in markers.values()),
                 errors=sum(int(m["errors"]) for m in markers.values()),
                 first_start=min((t[0] for t in times), default=None),
                 last_commit=max((t[1] for t in times), default=None),
                 truncated=sum(int(m.get("truncated") or 0) for m in markers.values()))


def running_shards(settings: Settings | None, job_id: str, client: redis.Redis | None = None) -> set[int]:
    """Shards of ``job_id`` whose lease is held on the broker; OSError when it cannot be reached.

    This scans the broker's keys: the path for jobs without a ledger only.
    """
    own = client is None
    if client is None:
        assert settings is not None
        client = broker_client(settings)
    prefix = f"{LEASE_PREFIX}{job_id}:"
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
    except redis.RedisError as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if own:
            client.close()
    shards = set()
    for key in keys:
        suffix = (key.decode() if isinstance(key, bytes) else key).removeprefix(prefix)
        if suffix.isdigit():
            shards.add(int(suffix))
    return shards
