"""Fault injection for the reliability tests. Inert unless ``BATCHFORMERS_TEST_FAULTS`` is set.

The variable holds comma-separated faults. Unless said otherwise they apply inside a shard
after its rows were processed and before its part is committed (:func:`before_commit`)::

    sleep=SECONDS   every shard sleeps that long (a slow shard, to kill a worker inside it)
    kill=SHARD      the process running shard SHARD kills itself with SIGKILL (a poison shard)
    raise=SHARD     shard SHARD raises RuntimeError (a shard that always fails)
    hang=SHARD      shard SHARD blocks the soft time limit's signal and sleeps (only the hard limit ends it)

Inside the rows of a shard run in pieces (:mod:`jobs.pieces`)::

    step-sleep=SECONDS  every step of ``BATCHFORMERS_PIECE_ROWS`` rows sleeps that long first (a slow shard)
    kill-piece=SHARD    the process running shard SHARD kills itself right after committing a piece
    steps=PATH          every step appends ``SHARD START STOP PID TIME`` to PATH (:func:`step`): rows really run

Kills inside the commit (:func:`commit_point`), at the points of :mod:`jobs.io.layout`::

    kill-part-written=SHARD     the part's bytes are in a hidden temporary file, not yet renamed
    kill-part-published=SHARD   the part is visible, its commit marker not yet written
    kill-committed=SHARD        the marker is written, ``_SUCCESS`` not yet considered

And two that change the others or only record::

    once=DIR        each kill/raise/hang fires only once per shard (a file in DIR remembers it),
                    so the shard's next run succeeds: a worker killed once, not a poison shard
    count=PATH      every start of a shard appends ``SHARD PID TIME`` to PATH (:func:`started`),
                    so a test counts runs itself instead of trusting the code's own counter

And one for the benchmarks (``bench/host.py``), from a shard's start on::

    device-seconds=PER_TOKEN    every model batch also sleeps PER_TOKEN seconds per padded token on the
                                device thread: a stand-in for device time that releases the GIL as a
                                device sync does (:func:`simulate_device_time`)

``batchformers compact`` reads the same variable for its own kill points (``compact-kill=POINT``,
``compact-sleep=POINT``, see :mod:`producer.compact`). Never set it in production.
"""

from __future__ import annotations

import os
import signal
import time

from jobs.engine import batching

FAULTS_ENV = "BATCHFORMERS_TEST_FAULTS"
HANG_SECONDS = 3600.0
COMMIT_KILLS = {"kill-part-written": "part-written", "kill-part-published": "part-published",
                "kill-committed": "committed"}
_device_seconds_per_token = 0.0


class InjectedFault(RuntimeError):
    """Raised by the ``raise=SHARD`` fault."""


def _faults() -> list[tuple[str, str]]:
    spec = os.environ.get(FAULTS_ENV, "")
    return [(name, value) for name, _, value in
            (item.partition("=") for item in filter(None, (part.strip() for part in spec.split(","))))]


def _fires(name: str, shard: int) -> bool:
    """Whether fault ``name`` of ``shard`` fires now: always, or its first time only under ``once=DIR``."""
    folder = dict(_faults()).get("once")
    if folder is None:
        return True
    os.makedirs(folder, exist_ok=True)
    try:
        os.close(os.open(os.path.join(folder, f"{name}-{shard}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def started(shard: int) -> None:
    """Record one start of ``shard`` in the ``count=PATH`` file and simulate device time, if configured."""
    for name, value in _faults():
        if name == "count":
            _append(value, f"{shard} {os.getpid()} {time.time():.3f}\n")
        elif name == "device-seconds":
            simulate_device_time(float(value))


def simulate_device_time(per_token: float) -> None:
    """From now on every model batch of this process also sleeps ``per_token`` seconds per padded token
    (0: no longer). It sleeps in a batch observer, which the engine calls on its device thread."""
    global _device_seconds_per_token
    _device_seconds_per_token = per_token
    batching.observe_batches(_device_time)


def _device_time(items: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
    if _device_seconds_per_token:
        time.sleep(_device_seconds_per_token * padded_tokens)


def _append(path: str, line: str) -> None:
    descriptor = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)
    try:
        os.write(descriptor, line.encode())  # one write under O_APPEND: lines of racing writers never mix
    finally:
        os.close(descriptor)


def step(shard: int, start: int, stop: int) -> None:
    """Record rows ``[start, stop)`` of ``shard`` about to run, and sleep, as configured."""
    for name, value in _faults():
        if name == "steps":
            _append(value, f"{shard} {start} {stop} {os.getpid()} {time.time():.3f}\n")
        elif name == "step-sleep":
            time.sleep(float(value))


def piece_committed(shard: int) -> None:
    """Kill the process after a piece of ``shard`` is committed when ``kill-piece=SHARD`` asks for it."""
    for name, value in _faults():
        if name == "kill-piece" and int(value) == shard and _fires(name, shard):
            _kill()


def before_commit(shard: int) -> None:
    """Apply the faults configured for ``shard``, if any."""
    for name, value in _faults():
        if name == "sleep":
            time.sleep(float(value))
        elif name == "kill" and int(value) == shard and _fires(name, shard):
            _kill()
        elif name == "hang" and int(value) == shard and _fires(name, shard):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # Celery's soft time limit signal
            time.sleep(HANG_SECONDS)
        elif name == "raise" and int(value) == shard and _fires(name, shard):
            raise InjectedFault(f"injected failure of shard {shard} ({FAULTS_ENV})")


def commit_point(shard: int, point: str) -> None:
    """Kill the process at ``point`` of ``shard``'s commit when a ``kill-<point>`` fault asks for it."""
    for name, value in _faults():
        if COMMIT_KILLS.get(name) == point and int(value) == shard and _fires(name, shard):
            _kill()
