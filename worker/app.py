"""The worker's Celery app, built from :func:`jobs.protocol.celery_config` (shared with the producer)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.signals import worker_process_init
from kombu import Connection

from jobs.protocol import celery_config
from jobs.settings import Settings
from worker.routing import RouteWatcher

ROUTED_ORDER = "worker.routing:AffinityCycle"


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
    config = celery_config(settings)
    if settings.routing:  # job queues ranked by worker.routing before each fetch (priority, loaded model)
        config["broker_transport_options"]["queue_order_strategy"] = ROUTED_ORDER
    app.conf.update(config)


def quiet_progress_bars() -> None:
    """No tqdm bars in worker logs ("Loading weights" from transformers, downloads from the hub):
    a worker's stderr goes to its log, line by line. Set before transformers is imported."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


app = make_app()


OMP_WAIT_POLICY = "OMP_WAIT_POLICY"
PASSIVE = "PASSIVE"


@worker_process_init.connect
def _limit_threads(**_: Any) -> None:
    """Each worker process gets its share of the cores, set after the fork.

    torch's OpenMP threads sleep between parallel regions instead of spinning (unless
    ``OMP_WAIT_POLICY`` says otherwise): a spinning intra-op thread takes the core the
    tokenizer's threads and the engine's host stages need, and with 2 torch threads on 2
    cores a near-free model's shard ran 1.7-4x slower (BENCHMARKS.md). OpenMP reads the policy
    when it is loaded, so it is set before torch is imported in this process.
    """
    os.environ.setdefault(OMP_WAIT_POLICY, PASSIVE)
    threads = Settings().torch_threads
    if threads:
        started = time.perf_counter()
        import torch

        logging.getLogger(__name__).info("batchformers: imported torch in process %s (%.1fs)", os.getpid(),
                                         time.perf_counter() - started)
        torch.set_num_threads(threads)


# After _limit_threads, so that a pool process sets its threads before it loads a model.
from worker import preload  # noqa: E402, F401 - each pool process imports torch early, and loads a known job's model
