"""What a worker's log says it did: the models it loaded and the jobs of the shards it ran, in order.

Read from the log lines (Celery's task success line, :mod:`worker.preload`'s load line) because tests and
the bench judge the workers from outside, as an operator would; shared so both read them the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

SUCCEEDED = re.compile(r"succeeded in [0-9.]+s: \{'shard': \d+, 'job': '([^']+)'")
LOADED = re.compile(r"batchformers: loaded (\w+) model (\S+) in process")
History = tuple[list[str], list[str]]


def history(text: str) -> History:
    """(the models loaded, the job of each shard that succeeded), in order, from one worker's log."""
    return [m.group(2) for m in LOADED.finditer(text)], [m.group(1) for m in SUCCEEDED.finditer(text)]


def histories(log_dir: Path | str) -> list[History]:
    """:func:`history` of every ``*.log`` in ``log_dir`` (one per worker), in the files' order."""
    return [history(log.read_text(errors="replace")) for log in sorted(Path(log_dir).glob("*.log"))]


def runs(jobs: list[str]) -> list[str]:
    """The jobs in order, each run of consecutive shards of one job once."""
    return [job for i, job in enumerate(jobs) if i == 0 or jobs[i - 1] != job]
