"""Watching a job: poll its status until it finishes, healing it meanwhile (:mod:`producer.recovery_watch`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from jobs.settings import Settings
from producer.status import JobStatus, job_status, status
from producer.status_counts import MarkerCache

DEFAULT_WATCH_INTERVAL = 2.0


def wait(output: str, poll: float = 0.5, timeout: float | None = None, on_update: Any = None,
         settings: Settings | None = None) -> JobStatus:
    """Poll until every shard is committed or failed, or the job is cancelled.

    With ``settings`` each poll reads the broker's ledger, and the wait takes over dead
    workers' shards and re-enqueues lost ones (:mod:`producer.recovery_watch`); without, the markers
    are read (each one once).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    cache: MarkerCache = {}
    watcher = _watcher(settings, output)
    while True:
        status = job_status(output, settings, cache)
        if on_update:
            on_update(status)
        if status.finished:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {status.job_id} not finished after {timeout}s: {status}")
        if watcher is not None:
            watcher.tick()
        time.sleep(poll)


def _watcher(settings: Settings | None, output: str) -> Any:
    from producer.recovery_watch import Watcher

    return None if settings is None else Watcher(settings, output)


def follow(job: str, settings: Settings, interval: float = DEFAULT_WATCH_INTERVAL) -> Iterator[JobStatus]:
    """Yield the status now and every ``interval`` seconds, the last one when the job has finished.

    Meanwhile it takes over dead workers' shards and re-enqueues lost ones, as workers do."""
    current = status(job, settings)
    yield current
    cache: MarkerCache = {}
    watcher = _watcher(settings, current.output)  # a watch heals the job too (producer.recovery_watch)
    while not current.finished:
        watcher.tick()
        time.sleep(interval)
        current = job_status(current.output, settings, cache)
        yield current
