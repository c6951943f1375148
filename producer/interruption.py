"""The marker of a job that stopped before it finished: interrupted, or never enqueued.

``batchformers run`` writes it when it is stopped (Ctrl-C, SIGTERM) after taking its
embedded Redis and workers down, so nothing can run that job any more; ``submit``
writes it when the broker failed after the manifest was written. ``status`` then
shows the job as interrupted rather than running, and the next ``submit`` or ``run``
(which resumes the job) removes it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from jobs.layout import META_DIR, OutputLayout

INTERRUPTED_FILE = f"{META_DIR}/INTERRUPTED"


def mark_interrupted(layout: OutputLayout, reason: str) -> None:
    record = {"reason": reason, "interrupted_at": time.time()}
    layout.storage.write_atomic(json.dumps(record).encode(), INTERRUPTED_FILE)


def interruption(layout: OutputLayout) -> dict[str, Any] | None:
    """The marker's record, None when the job was not interrupted."""
    try:
        loaded: dict[str, Any] = json.loads(layout.storage.read_bytes(INTERRUPTED_FILE))
    except FileNotFoundError:
        return None
    return loaded


def clear_interrupted(layout: OutputLayout) -> None:
    layout.storage.remove(INTERRUPTED_FILE)
