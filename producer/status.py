"""A job's state, read from its output location alone (works from any machine)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from jobs.layout import OutputLayout


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    output: str
    state: str  # running | complete | failed | cancelled
    shards: int
    committed: int
    failed: int
    pending: int
    rows: int
    rows_done: int
    row_errors: int
    rows_per_second: float | None
    eta_seconds: float | None
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.committed + self.failed >= self.shards or self.state == "cancelled"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_status(output: str) -> JobStatus:
    layout = OutputLayout(output)
    manifest = layout.read_manifest()
    committed = layout.committed()
    failed = {k: v for k, v in layout.failed().items() if k not in committed}
    rows_done = sum(m["rows"] for m in committed.values())
    rate = _rate(committed, manifest.created_at)
    remaining = manifest.total_rows - rows_done - sum(manifest.shards[i].rows for i in failed)
    if len(committed) == len(manifest.shards):
        state = "complete"
    elif layout.is_cancelled():
        state = "cancelled"
    elif len(committed) + len(failed) == len(manifest.shards):
        state = "failed"
    else:
        state = "running"
    return JobStatus(
        job_id=manifest.job_id,
        output=output,
        state=state,
        shards=len(manifest.shards),
        committed=len(committed),
        failed=len(failed),
        pending=len(manifest.shards) - len(committed) - len(failed),
        rows=manifest.total_rows,
        rows_done=rows_done,
        row_errors=sum(m["errors"] for m in committed.values()),
        rows_per_second=rate,
        eta_seconds=remaining / rate if rate and remaining > 0 and state == "running" else None,
        failures={k: v["error"] for k, v in failed.items()},
    )


def _rate(committed: dict[int, dict[str, Any]], created_at: float) -> float | None:
    """Rows per second since the first commit's shard started (or since submit)."""
    if not committed:
        return None
    first_start = min(m["committed_at"] - m["seconds"] for m in committed.values())
    last = max(m["committed_at"] for m in committed.values())
    elapsed = max(last - max(first_start, created_at), 1e-3)
    return sum(m["rows"] for m in committed.values()) / elapsed


def wait(output: str, poll: float = 0.5, timeout: float | None = None, on_update: Any = None) -> JobStatus:
    """Poll until every shard is committed or failed, or the job is cancelled."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = job_status(output)
        if on_update:
            on_update(status)
        if status.finished:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {status.job_id} not finished after {timeout}s: {status}")
        time.sleep(poll)
