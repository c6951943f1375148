"""The producer's side of the broker: a sending-only Celery app, and forgetting a shard's attempts.

The app is built from :func:`jobs.protocol.celery_config`, as the worker's is, but
registers no task: it sends ``TASK_NAME`` by name, so the producer loads neither the
worker's code nor a model library.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from celery import Celery

from jobs.protocol import attempt_keys, celery_config
from jobs.settings import Settings

DELETE_CHUNK = 1000  # keys per DEL call when forgetting the attempts of many shards


def sending_app(settings: Settings) -> Celery:
    """A Celery app that publishes shard tasks to the settings' broker and queue."""
    app = Celery("batchformers")
    app.conf.update(celery_config(settings))
    return app


def forget_attempts(client: redis.Redis, job_id: str, shards: Iterable[int]) -> None:
    """Forget the delivery counts and last errors of ``shards`` (a resubmit or ``retry`` gives them
    fresh attempts; see :mod:`worker.deliveries`)."""
    keys = attempt_keys(job_id, shards)
    for start in range(0, len(keys), DELETE_CHUNK):
        client.delete(*keys[start : start + DELETE_CHUNK])
