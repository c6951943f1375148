"""The marker of a job that stopped before it finished: interrupted, or never enqueued.

``batchformers run`` writes it when it is stopped (Ctrl-C, SIGTERM) after taking its
embedded Redis and workers down, so nothing can run that job any more; ``submit``
writes it when the broker failed after the manifest was written. ``status`` then
shows the job as interrupted rather than running, and the next ``submit`` or ``run``
(which resumes the job) removes it.

While ``run`` runs a job on its own Redis and workers it also leaves ``RUN`` (its
process id and host): if that process is gone without finishing the job (killed
with SIGKILL, out of memory, the machine rebooted), its workers went with it
(:func:`producer.embedded.die_with_parent`), and ``status`` on that host says
interrupted too.

Both markers are mirrored in the job's status record on the broker (:mod:`jobs.status_record`)
by the commands that write them, and judged by the one rule :func:`interruption_of`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # ``status`` judges the status record's copies of the markers without the storage
    from jobs.io.layout import OutputLayout

INTERRUPTED_FILE = "_batchformers/INTERRUPTED"  # in jobs.io.layout's META_DIR (a test checks)
RUN_FILE = "_batchformers/RUN"


def mark_interrupted(layout: OutputLayout, reason: str) -> dict[str, Any]:
    """Write the marker; returns it, for the status record."""
    record = {"reason": reason, "interrupted_at": time.time()}
    layout.storage.write_atomic(json.dumps(record).encode(), INTERRUPTED_FILE)
    return record


def interruption(layout: OutputLayout) -> dict[str, Any] | None:
    """Why the job stopped, None when it was not interrupted (as far as this host can tell)."""
    marker = _read(layout, INTERRUPTED_FILE)
    if marker is not None:
        return marker
    return interruption_of(None, _read(layout, RUN_FILE))


def interruption_of(marker: dict[str, Any] | None, running: dict[str, Any] | None) -> dict[str, Any] | None:
    """The rule, from the INTERRUPTED and RUN markers' contents (None where there is none)."""
    if marker is not None:
        return marker
    if running and running.get("host") == socket.gethostname() and not _alive(int(running.get("pid", 0))):
        return {"reason": f"the batchformers run that ran it (process {running.get('pid')}) ended without "
                          "finishing it (killed?)"}
    return None


def clear_interrupted(layout: OutputLayout) -> None:
    layout.storage.remove(INTERRUPTED_FILE)
    layout.storage.remove(RUN_FILE)


def mark_run_here(layout: OutputLayout) -> dict[str, Any]:
    """This process runs the job on its own broker and workers (see the module docstring); returns the marker."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}
    layout.storage.write_atomic(json.dumps(record).encode(), RUN_FILE)
    return record


def clear_run_here(layout: OutputLayout) -> None:
    layout.storage.remove(RUN_FILE)


def _read(layout: OutputLayout, name: str) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads(layout.storage.read_bytes(name))
    except FileNotFoundError:
        return None
    return loaded


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
