"""The producer's side of :mod:`jobs.recovery`: a waiting watcher's scans, sending with the producer's app.

A waiting ``batchformers run --broker`` or ``status --watch`` calls :meth:`Watcher.tick` on each
refresh: it scans at most every lease / 4, for the job it watches and every job the broker
knows, so that a cluster whose workers are all gone-and-back still heals. Shards are re-sent
the way ``submit`` sends them (:func:`jobs.dispatch.resend`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from jobs.dispatch import recovery_for as dispatch_recovery
from jobs.recovery import Recovery, ScanReport
from jobs.settings import Settings

log = logging.getLogger(__name__)


def _sending_app(settings: Settings) -> Any:
    from producer.broker import sending_app  # Celery, only when a shard is re-sent

    return sending_app(settings)


def recovery_for(settings: Settings, outputs: tuple[str, ...] = (), identity: str | None = None) -> Recovery:
    """A :class:`Recovery` on the settings' broker that re-sends through the producer's sending app."""
    return dispatch_recovery(settings, _sending_app, outputs=outputs, identity=identity)


class Watcher:
    """Scans from a waiting loop, at most once per takeover interval; never fails the wait."""

    def __init__(self, settings: Settings, output: str) -> None:
        self.recovery = recovery_for(settings, outputs=(output,))
        self.next_scan = 0.0

    def tick(self) -> ScanReport | None:
        if time.monotonic() < self.next_scan:
            return None
        self.next_scan = time.monotonic() + self.recovery.interval
        try:
            return self.recovery.scan()
        except (OSError, redis.RedisError) as exc:  # the broker is away: status says so; try again later
            log.debug("recovery scan skipped: %s", exc)
            return None
