"""A worker asked to stop drains: it takes no new shard, finishes the running one if it can, else gives it back.

Preemptible machines get a stop signal and a short grace before they vanish (a spot
termination notice, a Kubernetes pod's ``terminationGracePeriodSeconds``). On SIGTERM,
Celery's warm shutdown already stops taking messages and waits for the running shard;
what is added here is the bound: after ``BATCHFORMERS_DRAIN_SECONDS`` the main process
signals its pool processes (``GIVE_BACK_SIGNAL``), and one that is still running a shard's
rows raises :class:`ShardGivenBack` there. The task then releases the lease, takes back
the attempt it counted and requeues the message, so another worker starts the shard at
once instead of after the lease and visibility timeouts, and a preemption never uses up
the shard's ``max_retries``. The commit itself is never interrupted: once the rows are done
(:func:`forbid`), the signal only waits for the shard to finish.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from celery.signals import worker_process_init, worker_shutting_down

from jobs.settings import Settings

log = logging.getLogger(__name__)
GIVE_BACK_SIGNAL = signal.SIGUSR2  # free in pool processes (Celery's soft time limit is SIGUSR1)
_giving_back_allowed = False
_asked_meanwhile = False  # a give-back asked for while a piece was being committed (jobs.pieces)


class ShardGivenBack(BaseException):  # noqa: N818 - not an error: no `except Exception` may turn it into a failure
    """Raised in a pool process running a shard's rows when its worker's drain time is up."""


def allow(shard: int) -> None:
    """The shard's rows are running: the give-back signal may interrupt them from now on."""
    del shard
    global _giving_back_allowed, _asked_meanwhile
    _giving_back_allowed, _asked_meanwhile = True, False


def resume(shard: int) -> None:
    """A piece of the shard is committed and its rows run on: a give-back asked for meanwhile happens now."""
    global _giving_back_allowed, _asked_meanwhile
    _giving_back_allowed = True
    if _asked_meanwhile:
        _asked_meanwhile = False
        forbid(shard)
        raise ShardGivenBack("the worker is stopping: shard given back after its committed pieces")


def forbid(shard: int | None = None) -> None:
    """The rows are done (or the shard is over): the commit that follows is never interrupted."""
    del shard
    global _giving_back_allowed
    _giving_back_allowed = False


def _give_back(signum: int, frame: FrameType | None) -> None:
    if _giving_back_allowed:
        forbid()
        raise ShardGivenBack("the worker is stopping: shard given back")
    global _asked_meanwhile
    _asked_meanwhile = True  # honoured by resume() if the shard's rows go on after a piece's commit
    log.info("batchformers: stop requested while committing or idle; finishing first")


@worker_process_init.connect
def _listen(**_: Any) -> None:
    signal.signal(GIVE_BACK_SIGNAL, _give_back)


@worker_shutting_down.connect
def _start_drain(sig: Any = None, how: str = "", **_: Any) -> None:
    """In the worker's main process, on a warm shutdown: give the running shards back after the drain time."""
    if how != "Warm":
        return  # a cold shutdown abandons its shards at once; they come back as lost workers' shards
    seconds = Settings().drain_seconds
    log.warning("batchformers: stopping (%s); running shards have %.1f s to finish before they are given back",
                sig, seconds)
    timer = threading.Timer(seconds, give_back_running_shards)
    timer.daemon = True
    timer.start()


def give_back_running_shards() -> None:
    """Signal every pool process of this worker; those running a shard's rows give it back."""
    from billiard.process import active_children

    for child in active_children():
        try:
            os.kill(child.pid, GIVE_BACK_SIGNAL)
        except (ProcessLookupError, PermissionError, TypeError):
            continue
