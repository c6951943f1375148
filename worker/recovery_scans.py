"""Every worker scans for shards to take over or heal (:mod:`jobs.recovery`), from a thread of its main process.

Started when the worker is ready (Celery's ``worker_ready``, in the main process, so a
busy or crashed pool child does not stop it), it scans every lease / 4. The thread builds its
scanner itself (:func:`jobs.dispatch.recovery_for`, sending with the worker's own app), so that this costs the worker's start nothing. The main process
lives as long as the worker does: a worker SIGKILLed with its children is taken over by
the scans of the other workers (or of a waiting ``run --broker`` / ``status --watch``). While the worker
runs nothing, its scan also sends copies of its jobs' stragglers (:mod:`jobs.speculation`,
``BATCHFORMERS_SPECULATE``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown

from jobs.settings import Settings

log = logging.getLogger(__name__)
_stop = threading.Event()


@worker_ready.connect
def _start_scanning(sender: Any = None, **_: Any) -> None:
    identity = str(getattr(sender, "hostname", "") or "worker")
    thread = threading.Thread(target=_scan_forever, args=(identity, getattr(sender, "app", None)),
                              name="batchformers-recovery", daemon=True)
    thread.start()


@worker_shutdown.connect
def _stop_scanning(**_: Any) -> None:
    _stop.set()


def _scan_forever(identity: str, app: Any) -> None:
    from jobs.dispatch import recovery_for

    if app is None:
        from celery import current_app

        app = current_app
    settings = Settings()
    recovery = recovery_for(settings, lambda settings: app, identity=identity)
    if settings.speculate:
        recovery.speculation = speculation_for(settings, app)
    log.info("batchformers: scanning for dead workers' and lost shards every %.1fs", recovery.interval)
    while not _stop.wait(recovery.interval):
        try:
            recovery.scan()
        except (OSError, redis.RedisError) as exc:  # the broker is restarting: the next scan tries again
            log.warning("batchformers: recovery scan failed: %s", exc)
        except Exception:  # never let the thread die: takeover depends on it
            log.exception("batchformers: recovery scan failed")


def speculation_for(settings: Settings, app: Any) -> Any:
    """Copies of stragglers, sent through this worker's app while it runs nothing (jobs.speculation)."""
    from celery.worker import state

    from jobs.broker import client
    from jobs.dispatch import resend
    from jobs.speculation import Speculation

    def send(manifest: Any, layout: Any, shards: set[int], queue: str) -> int:
        queued = settings.model_copy(update={"queue": queue})
        return resend(manifest, layout, shards, queued, app, copy=True)

    return Speculation(client(settings.broker_url, timeout=5.0), send, settings.speculate_after_seconds,
                       idle=lambda: not state.active_requests)
