"""The Celery app: JSON only, late acks, prefetch 1, events on for Flower."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from jobs.settings import Settings

# A shard whose worker vanished is redelivered after this long; the lease in
# worker.lease stops a slow-but-alive shard from running twice meanwhile.
VISIBILITY_MARGIN = 2.0


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    app = Celery("batchformers", broker=settings.broker_url, backend=settings.backend_url())
    transport: dict[str, Any] = {"visibility_timeout": int(settings.lease_seconds * VISIBILITY_MARGIN)}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        task_default_queue=settings.queue,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    if settings.broker_url.startswith("rediss://"):
        app.conf.broker_use_ssl = {"ssl_cert_reqs": "required"}
        app.conf.redis_backend_use_ssl = {"ssl_cert_reqs": "required"}
    app.conf.imports = ("worker.tasks",)
    return app


app = make_app()


@worker_process_init.connect
def _limit_threads(**_: Any) -> None:
    """Each worker process gets its share of the cores, set after the fork."""
    threads = Settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
