"""Sending shards: their messages, time limits and route, on any Celery app; and recovery's re-send.

Submit, retry and recovery (a worker's takeover thread, a waiting ``run --broker`` or
``status --watch``) all send a shard the same way, so a re-sent shard goes where its first
message went, with the same limits. The app is passed in (the producer's sending-only app,
a worker's own), so this module needs no Celery import.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from jobs import routing
from jobs.broker import broker_errors, client
from jobs.io.layout import OutputLayout
from jobs.manifest import Manifest
from jobs.protocol import DEFAULT_PRIORITY, TASK_NAME, ShardMessage
from jobs.recovery import Recovery
from jobs.settings import Settings
from jobs.spec import JobSpec

# The hard time limit leaves the shard this long after the soft one to record its failure.
GRACE_FRACTION = 0.1
MIN_GRACE = 5.0
MAX_GRACE = 300.0

AppFor = Callable[[Settings], Any]
"""The Celery app that sends for the given settings (the queue may be a job's own)."""


def time_limits(spec: JobSpec, settings: Settings) -> tuple[float, float]:
    """(soft, hard) seconds one shard of ``spec`` may run."""
    soft = spec.shard_time_limit or settings.shard_time_limit
    return soft, soft + min(MAX_GRACE, max(MIN_GRACE, soft * GRACE_FRACTION))


def messages_for(manifest: Manifest, layout: OutputLayout, only: set[int] | None = None) -> list[ShardMessage]:
    """Messages for the shards that are not committed (optionally only some of them)."""
    committed = layout.marker_numbers()[0]  # names only: a resubmit of a 5,000-shard job reads no marker
    return [
        ShardMessage(
            job_id=manifest.job_id,
            shard=plan.index,
            output=layout.location,
            source=manifest.sources[plan.source].url,
            start=plan.start,
            stop=plan.stop,
        )
        for plan in manifest.shards
        if plan.index not in committed and (only is None or plan.index in only)
    ]


def enqueue(messages: list[ShardMessage], settings: Settings, app: Any,
            limits: tuple[float, float] | None = None, spec: JobSpec | None = None) -> str:
    """Send one task per message through ``app``; ``limits`` are the (soft, hard) time limits of each.

    With the job's ``spec`` (and routing on) the messages go to the job's own queue, with its
    priority (:mod:`jobs.routing`); without, to ``settings.queue``. Returns the Redis list they went to.
    """
    options: dict[str, Any] = {}
    if limits:
        options = {"soft_time_limit": limits[0], "time_limit": limits[1]}
    queue = settings.queue
    if settings.routing:  # unrouted messages too: kombu would serve a message without one first
        options["priority"] = routing.message_priority(DEFAULT_PRIORITY)
    with broker_errors(settings.broker_url):
        if spec is not None and settings.routing and messages:
            queue, options["priority"] = announce_route(settings, messages[0].job_id, spec)
        with app.producer_or_acquire() as producer:
            for message in messages:
                app.send_task(
                    TASK_NAME,
                    args=[replace(message, enqueued_at=time.time()).to_dict()],  # the queue wait's start
                    queue=queue,
                    producer=producer,
                    argsrepr=f"job={message.job_id} shard={message.shard} rows={message.rows}",
                    **options,
                )
    return routing.queue_keys(queue)[options.get("priority", 0)]


def announce_route(settings: Settings, job_id: str, spec: JobSpec) -> tuple[str, int]:
    """Register the job's route for the workers; its (queue, kombu message priority)."""
    route = routing.route_for(settings.queue, job_id, spec)
    connection = client(settings.broker_url)
    try:
        routing.register(connection, settings.queue, route)
    finally:
        connection.close()
    return route.queue, routing.message_priority(route.priority)


def resend(manifest: Manifest, layout: OutputLayout, shards: set[int], settings: Settings, app: Any,
           copy: bool = False) -> int:
    """Enqueue ``shards`` of the job (those not committed) as a submit would, or as speculative copies
    (:mod:`jobs.speculation`); returns how many were sent."""
    messages = [replace(message, copy=copy) for message in messages_for(manifest, layout, only=shards)]
    if messages:
        _enqueue_job(manifest, messages, settings, app)
    return len(messages)


def _enqueue_job(manifest: Manifest, messages: list[ShardMessage], settings: Settings, app: Any) -> str:
    """``messages`` of the job on its own queue, with its priority and time limits; the Redis list they went to."""
    spec = manifest.job_spec()  # the job's own queue and priority when routing is on
    return enqueue(messages, settings, app, limits=time_limits(spec, settings), spec=spec)


def send_first(manifest: Manifest, layout: OutputLayout, shard: int, settings: Settings, app: Any) -> None:
    """Enqueue ``shard`` again at the head of its queue, to run before the shards queued after it first: a
    shard a stopping worker gives back (:mod:`worker.drain`). kombu's own requeue puts a message back on
    the end that is served last, behind the job's whole backlog."""
    messages = messages_for(manifest, layout, only={shard})
    if not messages:
        return
    key = _enqueue_job(manifest, messages, settings, app)
    connection = client(settings.broker_url)
    try:
        with broker_errors(settings.broker_url):
            # New messages go on the left, workers pop from the right. Our message is the leftmost unless
            # another was sent in between; moving that one instead only reorders two waiting shards.
            connection.eval(_TO_HEAD, 1, key)
    finally:
        connection.close()


_TO_HEAD = """local message = redis.call('LPOP', KEYS[1])
if message then redis.call('RPUSH', KEYS[1], message) end
return message and 1 or 0"""


def recovery_for(settings: Settings, app_for: AppFor, outputs: tuple[str, ...] = (),
                 identity: str | None = None) -> Recovery:
    """A :class:`jobs.recovery.Recovery` on the settings' broker that re-sends through ``resend``."""

    def send(manifest: Manifest, layout: OutputLayout, shards: set[int], queue: str) -> int:
        queued = settings.model_copy(update={"queue": queue})
        return resend(manifest, layout, shards, queued, app_for(queued))

    return Recovery(client(settings.broker_url, timeout=5.0), send, settings.lease_seconds, settings.queue,
                    outputs=outputs, identity=identity or f"{socket.gethostname()}/watcher")
