"""The producer's side of :mod:`jobs.recovery`: how a re-enqueued shard is sent, and a waiting watcher's scans.

``resend`` sends shards exactly the way ``submit`` does (:func:`producer.submit.enqueue`,
with the job's time limits), so a re-enqueued shard goes where its first message went.
A waiting ``batchformers run --broker`` or ``status --watch`` calls :meth:`Watcher.tick`
on each refresh: it scans at most every lease / 4, for the job it watches and every job the
broker knows, so that a cluster whose workers are all gone-and-back still heals.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import redis

from jobs.io.layout import OutputLayout
from jobs.manifest import Manifest
from jobs.recovery import Recovery, ScanReport
from jobs.settings import Settings

log = logging.getLogger(__name__)
BROKER_TIMEOUT = 5.0


def resend(manifest: Manifest, layout: OutputLayout, shards: set[int], settings: Settings, app: Any = None) -> int:
    """Enqueue ``shards`` of the job (those not committed) as ``submit`` would; returns how many were sent."""
    from producer.submit import enqueue, messages_for, time_limits

    messages = messages_for(manifest, layout, only=shards)
    if messages:
        spec = manifest.job_spec()  # the job's own queue and priority when routing is on
        enqueue(messages, settings, app=app, limits=time_limits(spec, settings), spec=spec)
    return len(messages)


def recovery_for(settings: Settings, app: Any = None, outputs: tuple[str, ...] = (),
                 identity: str | None = None) -> Recovery:
    """A :class:`Recovery` on the settings' broker that sends through ``resend``."""
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=BROKER_TIMEOUT,
                                  socket_connect_timeout=BROKER_TIMEOUT)

    def send(manifest: Manifest, layout: OutputLayout, shards: set[int], queue: str) -> int:
        return resend(manifest, layout, shards, settings.model_copy(update={"queue": queue}), app=app)

    return Recovery(client, send, settings.lease_seconds, settings.queue, outputs=outputs,
                    identity=identity or f"{socket.gethostname()}/watcher")


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
