"""Fault injection for the reliability tests. Inert unless ``BATCHFORMERS_TEST_FAULTS`` is set.

The variable holds comma-separated faults, applied inside a shard after its rows were
processed and before its part is committed (the moment where a crash hurts most)::

    sleep=SECONDS   every shard sleeps that long (a slow shard, to kill a worker inside it)
    kill=SHARD      the process running shard SHARD kills itself with SIGKILL (a poison shard)
    raise=SHARD     shard SHARD raises RuntimeError (a shard that always fails)
    hang=SHARD      shard SHARD blocks the soft time limit's signal and sleeps (only the hard limit ends it)

Never set it in production.
"""

from __future__ import annotations

import os
import signal
import time

FAULTS_ENV = "BATCHFORMERS_TEST_FAULTS"
HANG_SECONDS = 3600.0


class InjectedFault(RuntimeError):
    """Raised by the ``raise=SHARD`` fault."""


def before_commit(shard: int) -> None:
    """Apply the faults configured for ``shard``, if any."""
    spec = os.environ.get(FAULTS_ENV, "")
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        if name == "sleep":
            time.sleep(float(value))
        elif name == "kill" and int(value) == shard:
            os.kill(os.getpid(), signal.SIGKILL)
        elif name == "hang" and int(value) == shard:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # Celery's soft time limit signal
            time.sleep(HANG_SECONDS)
        elif name == "raise" and int(value) == shard:
            raise InjectedFault(f"injected failure of shard {shard} ({FAULTS_ENV})")
