"""The Celery app: JSON only, late acks, prefetch 1, events on for Flower."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.signals import worker_process_init
from kombu import Connection

from jobs.routing import PRIORITY_STEPS
from jobs.settings import Settings
from worker.routing import RouteWatcher

# A shard whose worker vanished is redelivered after VISIBILITY_MARGIN leases; the lease in
# worker.lease stops a slow-but-alive shard from running twice meanwhile (see its docstring).
VISIBILITY_MARGIN = 2.0
# Unacked messages older than the visibility timeout are looked for every lease / RESTORE_SWEEPS
# seconds (kombu's default is about every 100 s, too slow for a one-minute bound).
RESTORE_SWEEPS_PER_LEASE = 2
MAX_RESTORE_INTERVAL = 30
# Publishing a task or storing a result waits this long for a restarting broker.
# A replacement pool process imports torch before it reports up; on a loaded machine that takes
# longer than Celery's 4 s, and the process would be killed and replaced again and again.
PROCESS_UP_TIMEOUT = 60.0
# Job queues are ranked by worker.routing before each fetch; without routing, kombu's plain rotation.
ROUTED_ORDER = "worker.routing:AffinityCycle"
PUBLISH_RETRY = {"max_retries": 20, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 5.0}


class MaskedConnection(Connection):  # type: ignore[misc]
    """kombu shows ``redis://:**@host`` for every URL, as if it had a password: mask only a real one."""

    def as_uri(self, include_password: Any = False, mask: Any = "**", **kwargs: Any) -> str:  # type: ignore[override]
        uri: str = super().as_uri(include_password=include_password, mask=mask, **kwargs)
        if not include_password and not self.password:
            uri = uri.replace(f"{self.userid or ''}:{mask}@", f"{self.userid}@" if self.userid else "", 1)
        return uri


class _AMQP(AMQP):  # type: ignore[misc]
    Connection = MaskedConnection


def make_app(settings: Settings | None = None) -> Celery:
    app = Celery("batchformers", amqp=_AMQP)
    configure(app, settings or Settings())
    app.conf.imports = ("worker.tasks",)
    app.steps["consumer"].add(RouteWatcher)
    return app


def configure(app: Celery, settings: Settings) -> None:
    """Point ``app`` at the settings' broker and backend, with the batch-work configuration."""
    restore_every = max(1, min(MAX_RESTORE_INTERVAL, int(settings.lease_seconds / RESTORE_SWEEPS_PER_LEASE)))
    transport: dict[str, Any] = {
        "visibility_timeout": max(1, int(settings.lease_seconds * VISIBILITY_MARGIN)),
        "unacked_restore_interval": restore_every,
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.backend_url(),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_timeout=False,  # a shard killed at its hard time limit is requeued, then counted
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        task_default_queue=settings.queue,
        broker_transport_options={
            **transport,
            "priority_steps": PRIORITY_STEPS,
            "queue_order_strategy": ROUTED_ORDER if settings.routing else "round_robin",
        },
        result_backend_transport_options=transport,
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker outlives any broker restart
        task_publish_retry_policy=PUBLISH_RETRY,
        result_backend_always_retry=True,
        result_backend_max_retries=PUBLISH_RETRY["max_retries"],
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_proc_alive_timeout=PROCESS_UP_TIMEOUT,
    )
    if settings.broker_url.startswith("rediss://"):
        app.conf.broker_use_ssl = {"ssl_cert_reqs": "required"}
    if settings.backend_url().startswith("rediss://"):
        app.conf.redis_backend_use_ssl = {"ssl_cert_reqs": "required"}


def quiet_progress_bars() -> None:
    """No tqdm bars in worker logs ("Loading weights" from transformers, downloads from the hub):
    a worker's stderr goes to its log, line by line. Set before transformers is imported."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


app = make_app()


@worker_process_init.connect
def _limit_threads(**_: Any) -> None:
    """Each worker process gets its share of the cores, set after the fork."""
    threads = Settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
