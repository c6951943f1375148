"""What ``batchformers report`` shows, gathered from a job's output: its manifest, markers and parts.

Read through the storage layer like every other command, so an ``s3://`` output works the same.
A running job's report shows what is committed so far. Markers written before shards recorded
their worker name, start, queue wait, model load and stages still read: the worker is then the
host, the start is the commit time less the shard's seconds, and the stages are unknown.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from jobs.io.layout import OutputLayout
from jobs.manifest import Manifest

STRAGGLERS = 5  # slowest shards shown with their row-length profile
STAGES = ("read", "encode", "forward", "decode", "write")
ERROR_KIND_CHARS = 80


@dataclass(frozen=True)
class ShardRun:
    """One committed shard as its marker tells it."""

    shard: int
    worker: str
    start: float
    end: float
    rows: int
    errors: int
    truncated: int
    tokens: int | None
    padded_tokens: int | None
    attempt: int
    stages: dict[str, float]
    model_load_seconds: float | None
    queue_wait_seconds: float | None
    work_seconds: float
    """The rows' own time (reading, the model, assembling; the marker's ``seconds``), without a model load."""

    @property
    def seconds(self) -> float:
        """From its start (after the lease) to its commit: the model load and the write included."""
        return max(0.0, self.end - self.start)

    @property
    def padding_ratio(self) -> float | None:
        """Share of the padded tokens that were padding."""
        if not self.tokens or not self.padded_tokens:
            return None
        return 1.0 - self.tokens / self.padded_tokens

    @classmethod
    def from_marker(cls, shard: int, marker: dict[str, Any]) -> ShardRun:
        end = float(marker.get("committed_at") or 0.0)
        seconds = float(marker.get("seconds") or 0.0)
        return cls(shard=shard, worker=str(marker.get("worker_name") or marker.get("worker") or "unknown"),
                   start=float(marker.get("started_at") or end - seconds), end=end,
                   rows=int(marker.get("rows") or 0), errors=int(marker.get("errors") or 0),
                   truncated=int(marker.get("truncated") or 0), tokens=marker.get("tokens"),
                   padded_tokens=marker.get("padded_tokens"), attempt=int(marker.get("attempt") or 1),
                   stages={k: float(v) for k, v in (marker.get("stages") or {}).items()},
                   model_load_seconds=marker.get("model_load_seconds"),
                   queue_wait_seconds=marker.get("queue_wait_seconds"), work_seconds=seconds)


@dataclass
class Straggler:
    shard: int
    seconds: float
    rows: int
    lengths: dict[str, int] | None  # characters per row: min, median, p90, max (None: input unreadable)


@dataclass
class ReportData:
    """Everything the page shows, as plain numbers."""

    job_id: str
    task: str
    model: str
    output: str
    shards: int
    runs: list[ShardRun]
    failures: dict[int, dict[str, Any]]
    complete: bool
    failure: str | None = None  # why the finished job failed (its _FAILED), when it did
    stragglers: list[Straggler] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def workers(self) -> list[str]:
        return sorted({run.worker for run in self.runs})

    def totals(self) -> dict[str, Any]:
        """The page's headline numbers (the tests compare them with the markers)."""
        runs = self.runs
        start = min((run.start for run in runs), default=0.0)
        end = max((run.end for run in runs), default=0.0)
        return {"shards": self.shards, "committed": len(runs), "failed": len(self.failures),
                "rows": sum(run.rows for run in runs), "errors": sum(run.errors for run in runs),
                "truncated": sum(run.truncated for run in runs), "workers": len(self.workers),
                "tokens": sum(run.tokens or 0 for run in runs),
                "retried": sum(1 for run in runs if run.attempt > 1),
                "model_loads": sum(1 for run in runs if run.model_load_seconds is not None),
                "longest_queue_wait_seconds": max((run.queue_wait_seconds or 0.0 for run in runs), default=0.0),
                "wall_seconds": round(end - start, 3),
                "worker_seconds": round(sum(run.seconds for run in runs), 3)}

    def stage_totals(self) -> dict[str, float]:
        """Seconds per stage summed over the shards, and the model loads they paid."""
        summed = {stage: 0.0 for stage in STAGES}
        for run in self.runs:
            for stage, seconds in run.stages.items():
                summed[stage] = summed.get(stage, 0.0) + seconds
        summed["model load"] = sum(run.model_load_seconds or 0.0 for run in self.runs)
        return {stage: round(seconds, 4) for stage, seconds in summed.items()}


def gather(location: str, read_rows: bool = True) -> ReportData:
    """The report's data for the job at ``location``; ``read_rows``: also read the parts' errors and the
    stragglers' input rows (a few columns of a few files)."""
    layout = OutputLayout(location)
    manifest = layout.read_manifest()
    committed, failed = layout.marker_numbers()
    markers = layout.read_committed(sorted(committed))
    failures = layout.read_failed(sorted(failed - committed))
    runs = sorted((ShardRun.from_marker(shard, marker) for shard, marker in markers.items()), key=lambda r: r.start)
    data = ReportData(job_id=manifest.job_id, task=str(manifest.spec.get("task")),
                      model=str(manifest.spec.get("model")), output=layout.location, shards=len(manifest.shards),
                      runs=runs, failures=failures, complete=layout.is_complete())
    failure = layout.job_failure()
    if failure is not None:
        data.failure = str(failure.get("reason") or "failed")
    if read_rows and runs:
        data.error_kinds = error_kinds(layout, [run.shard for run in runs if run.errors])
        slowest = sorted(runs, key=lambda run: -run.seconds)[:STRAGGLERS]
        data.stragglers = [Straggler(run.shard, round(run.seconds, 3), run.rows, row_lengths(manifest, run.shard))
                           for run in slowest]
    return data


def error_kind(message: str) -> str:
    """An error message with its numbers and quoted values blanked, so that rows group by what went wrong."""
    kind = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message)
    return re.sub(r"\d+", "N", kind)[:ERROR_KIND_CHARS]


def error_kinds(layout: OutputLayout, shards: list[int]) -> dict[str, int]:
    """Rows in error by kind, read from the ``error`` column of the parts that have any."""
    counts: Counter[str] = Counter()
    for shard in shards:
        try:
            errors = layout.row_errors(shard)
        except FileNotFoundError:  # compacted into another part: its marker's count stands alone
            continue
        counts.update(error_kind(value) for value in errors if value is not None)
    return dict(counts.most_common())


def row_lengths(manifest: Manifest, shard: int) -> dict[str, int] | None:
    """Characters per row of the shard's text inputs (summed over its roles): min, median, p90, max."""
    import numpy as np

    from jobs.io.sources import read_rows

    plan = manifest.shards[shard]
    roles = manifest.job_spec().input_columns()
    try:
        table = read_rows(manifest.sources[plan.source], plan.start, plan.stop, list(dict.fromkeys(roles.values())))
    except Exception:  # noqa: BLE001 - the input may be gone since; the report still shows the rest
        return None
    lengths = np.zeros(table.num_rows, dtype=np.int64)
    for column in dict.fromkeys(roles.values()):
        lengths += np.array([len(v) if isinstance(v, str) else 0 for v in table.column(column).to_pylist()])
    if not len(lengths):
        return None
    return {"min": int(lengths.min()), "median": int(np.median(lengths)), "p90": int(np.percentile(lengths, 90)),
            "max": int(lengths.max())}
