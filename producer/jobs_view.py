"""``batchformers jobs``: every job the broker knows, one line each, with what ``status`` would say.

The ids come from the broker's job index (:mod:`producer.job_index`), the numbers from each
job's status record and ledger, else its output (:func:`producer.status.job_status`); the job id a line shows is what
``status``, ``cancel`` and ``retry`` take.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from jobs.protocol import DEFAULT_PRIORITY
from jobs.settings import Settings
from producer.job_index import KnownJob, known_jobs
from producer.status import job_status

UNREADABLE = "unreadable"


@dataclass(frozen=True)
class JobLine:
    job_id: str
    state: str  # a status state, or "unreadable" when the output cannot be read (see note)
    priority: int
    model: str  # as pinned at submit
    shards: int
    committed: int
    failed: int
    rows: int
    rows_done: int
    rows_per_second: float | None
    eta_seconds: float | None
    submitted_at: float
    output: str
    note: str = ""
    pending: int = 0  # shards waiting for a worker: status's pending (Flower's batchformers_jobs_pending_shards)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_lines(settings: Settings, limit: int | None = None) -> list[JobLine]:
    """The broker's jobs, newest first; a job whose output is gone is listed as unreadable."""
    return [_line(job, settings) for job in known_jobs(settings, limit=limit)]


def _line(job: KnownJob, settings: Settings) -> JobLine:
    try:
        current = job_status(job.output, settings, job_id=job.job_id)
    except Exception as exc:  # noqa: BLE001 - any store's error (credentials, a gone bucket) hides only this job
        return JobLine(job.job_id, UNREADABLE, DEFAULT_PRIORITY, "", 0, 0, 0, 0, 0, None, None,
                       job.submitted_at, job.output, note=str(exc))
    return JobLine(job_id=job.job_id, state=current.state, priority=current.priority, model=current.model,
                   shards=current.shards, committed=current.committed, failed=current.failed, rows=current.rows,
                   rows_done=current.rows_done, rows_per_second=current.rows_per_second,
                   eta_seconds=current.eta_seconds, submitted_at=job.submitted_at, output=job.output,
                   note=current.note, pending=current.pending)


def render(lines: list[JobLine]) -> Any:
    """A rich table, one row per job."""
    import time

    from rich.table import Table

    from producer.status_render import duration

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in [("job", "left"), ("state", "left"), ("pri", "right"), ("model", "left"),
                          ("shards", "right"), ("rows/s", "right"), ("ETA", "right"), ("submitted", "left"),
                          ("output", "left")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for line in lines:
        shards = f"{line.committed}/{line.shards}" + (f" ({line.failed} failed)" if line.failed else "")
        rate = f"{line.rows_per_second:,.1f}" if line.rows_per_second else "-"
        table.add_row(line.job_id, line.state, str(line.priority), line.model, shards, rate,
                      duration(line.eta_seconds), time.strftime("%Y-%m-%d %H:%M", time.localtime(line.submitted_at)),
                      line.output)
    return table
