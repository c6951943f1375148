"""Every worker scans for shards to take over or heal (:mod:`jobs.recovery`), from a thread of its main process.

Started when the worker is ready (Celery's ``worker_ready``, in the main process, so a
busy or crashed pool child does not stop it), it scans every lease / 4. The thread builds its
scanner itself (:func:`jobs.dispatch.recovery_for`, sending with the worker's own app), so that this costs the worker's start nothing. The main process
lives as long as the worker does: a worker SIGKILLed with its children is taken over by
the scans of the other workers (or of a waiting ``run --broker`` / ``status --watch``).
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
    recovery = recovery_for(Settings(), lambda settings: app, identity=identity)
    log.info("batchformers: scanning for dead workers' and lost shards every %.1fs", recovery.interval)
    while not _stop.wait(recovery.interval):
        try:
            recovery.scan()
        except (OSError, redis.RedisError) as exc:  # the broker is restarting: the next scan tries again
            log.warning("batchformers: recovery scan failed: %s", exc)
        except Exception:  # never let the thread die: takeover depends on it
            log.exception("batchformers: recovery scan failed")
