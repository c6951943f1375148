"""A job's state: one look at its counts (:mod:`producer.status_counts` says where they come from),
and the rule that names the state from them (:func:`job_state`).

Watching a job over time is :mod:`producer.watch`; showing it, :mod:`producer.status_render`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import redis

from jobs import speculation, status_record
from jobs.broker import text
from jobs.io.completion import ERROR_RATE_NOTE, outcome
from jobs.ledger import Ledger, Tally
from jobs.protocol import DEFAULT_PRIORITY, output_job_key
from jobs.settings import Settings
from jobs.status_record import StatusRecord
from producer.interruption import interruption_of
from producer.status_counts import MarkerCache, broker_client, leased, running_shards

FIRST_ERRORS = 3
LOOK_UP = ""
"""``job_status``'s ``job_id`` for "the job last submitted to this output, as the broker knows it"."""


@dataclass(frozen=True)
class JobStatus:
    """One look at a job. ``running`` is None when the broker was not asked or not reachable."""

    job_id: str
    output: str
    state: str  # queued | running | complete | failed | cancelled | interrupted (see job_state)
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
    running: int | None = None
    running_shards: list[int] = field(default_factory=list)
    broker: str = "not asked"  # not asked | reachable | unreachable: <why>
    elapsed_seconds: float = 0.0
    task: str = ""
    note: str = ""  # why the job failed or is interrupted, when it is
    truncated: int = 0  # rows whose input was cut to the model's length (a `truncated` output column)
    first_errors: list[str] = field(default_factory=list)  # of rows, when the error rate failed the job
    source: str = ""  # where the counts came from: ledger | success | failed (_FAILED) | markers
    model: str = ""  # the model as pinned at submit (jobs.pinning), else as the spec names it
    priority: int = DEFAULT_PRIORITY  # the spec's priority, when it has one
    copies: int = 0  # speculative copies of stragglers started (jobs.speculation)

    @property
    def finished(self) -> bool:
        """Nothing more will happen unless someone acts (an unreachable broker may come back).

        With every shard counted but the state still "running", the last commit is writing _SUCCESS."""
        stopped = self.state == "interrupted" and not self.broker.startswith("unreachable")
        return ((self.committed + self.failed >= self.shards and self.state != "running")
                or self.state == "cancelled" or stopped)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def status(job: str, settings: Settings | None = None) -> JobStatus:
    """The status of a job given its id (looked up on the broker) or its output location."""
    from producer.job_index import resolve

    settings = settings or Settings()
    output = resolve(settings, job)
    return job_status(output, settings, job_id=job if output != job else LOOK_UP)


def job_status(output: str, settings: Settings | None = None, cache: MarkerCache | None = None,
               job_id: str | None = None) -> JobStatus:
    """Read the job at ``output``; with ``settings``, from the broker's ledger and leases when it answers.

    With ``job_id`` too (or :data:`LOOK_UP`: the broker's id of the job last submitted to ``output``),
    from the job's status record (:mod:`jobs.status_record`) when the broker holds one for that
    output: then nothing of the output is read, nor its storage imported."""
    unreachable: redis.RedisError | None = None
    if settings is not None and job_id is not None:
        client = broker_client(settings)
        try:
            found = _from_record(client, output, job_id)
            if found is not None:
                return found
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # the output's path says so, asking no more
            unreachable = exc
        except redis.RedisError:  # a key of another type where the record is (WRONGTYPE): read the output
            pass
        finally:
            client.close()
    return _from_output(output, settings, cache, unreachable)


def _from_record(client: redis.Redis, output: str, job_id: str) -> JobStatus | None:
    """The status from the record and the ledger alone; None when they cannot tell it as the output would."""
    if job_id == LOOK_UP:
        found = client.get(output_job_key(output))
        if found is None:
            return None
        job_id = text(found)
    record = status_record.read(client, job_id)
    if record is None or record.output != output:  # none, unreadable, or of a job that was elsewhere
        return None
    ledger = Ledger(client, job_id, record.shards, record.created_at)
    tally = ledger.read()
    if tally is None or tally.unread:  # no commit yet, expired, lost, or rebuilt with markers to read
        return None
    if len(tally.committed) >= record.shards and tally.finished_at is None:
        return None  # the last commit is writing _SUCCESS (or _FAILED): whether it is there, the output says
    tally = leased(ledger, tally, dict(tally.failed))
    return _assemble(output, record, tally, "ledger", client, "reachable",
                     interrupted=interruption_of(record.interrupted, record.run), finished=lambda: True)


def _from_output(output: str, settings: Settings | None, cache: MarkerCache | None,
                 unreachable: redis.RedisError | None = None) -> JobStatus:
    from jobs.io.layout import OutputLayout
    from producer.interruption import interruption
    from producer.status_counts import from_completion, from_ledger, from_listing

    layout = OutputLayout(output)
    manifest = layout.read_manifest()
    tally: Tally | None = None
    client: redis.Redis | None = None
    broker = "not asked"
    if settings is not None:
        client = broker_client(settings)
        try:
            if unreachable is not None:
                raise unreachable
            tally = from_ledger(Ledger.for_manifest(client, manifest), layout)
            broker = "reachable"
        except redis.RedisError as exc:
            client.close()
            client, broker = None, f"unreachable: {type(exc).__name__}: {exc}"
    source = "ledger"
    if tally is None:
        tally, source = from_completion(layout, manifest) or (from_listing(layout, manifest, cache), "markers")
    record = replace(status_record.record_of(manifest, output), cancelled=layout.is_cancelled())
    try:
        return _assemble(output, record, tally, source, client, broker, interrupted=interruption(layout),
                         finished=layout.is_finished, settings=settings)
    finally:
        if client is not None:
            client.close()


def _assemble(output: str, job: StatusRecord, tally: Tally, source: str, client: redis.Redis | None, broker: str,
              *, interrupted: dict[str, Any] | None, finished: Callable[[], bool],
              settings: Settings | None = None) -> JobStatus:
    """The one rule both paths judge a job by: the job's facts and flags, with its counts."""
    committed, failed = tally.committed, {k: v for k, v in tally.failed.items() if k not in tally.committed}
    rows_done = tally.rows
    rate = _rate(tally, job.created_at)
    remaining = job.total_rows - rows_done - sum(job.shard_rows[i] for i in failed)
    running: list[int] | None = None
    unfinished = len(committed) + len(failed) < job.shards
    if client is not None and (unfinished or job.cancelled):
        try:
            leased_now = tally.running if source == "ledger" else running_shards(settings, job.job_id, client)
            running = sorted(leased_now - committed - set(failed))
        except OSError as exc:
            broker = f"unreachable: {exc}"
    elif client is not None:
        running, broker = [], "not needed"
    copies = 0
    if client is not None:
        try:
            copies = speculation.copies(client, job.job_id)
        except redis.RedisError:
            copies = 0
    pending = job.shards - len(committed) - len(failed) - len(running or [])
    state, note = job_state(
        shards=job.shards, committed=len(committed), failed=len(failed), cancelled=job.cancelled,
        interrupted=interrupted, running=running, broker=broker, rows_done=rows_done, row_errors=tally.errors,
        max_error_rate=job.max_error_rate,
    )
    if state in ("complete", "failed") and len(committed) == job.shards and source == "ledger" and not finished():
        state = "running"  # every shard is counted; the last commit is still writing _SUCCESS or _FAILED
    first_errors = _first_errors(output, sorted(committed)) if note.startswith(ERROR_RATE_NOTE) else []
    finished_at = tally.last_commit if tally.last_commit is not None else time.time()
    return JobStatus(
        job_id=job.job_id,
        output=output,
        state=state,
        shards=job.shards,
        committed=len(committed),
        failed=len(failed),
        pending=pending,
        rows=job.total_rows,
        rows_done=rows_done,
        row_errors=tally.errors,
        rows_per_second=rate,
        eta_seconds=remaining / rate if rate and remaining > 0 and state == "running" else None,
        failures=failed,
        running=None if running is None else len(running),
        running_shards=running or [],
        broker=broker,
        elapsed_seconds=round((finished_at if state == "complete" else time.time()) - job.created_at, 3),
        task=job.task,
        note=note,
        truncated=tally.truncated,
        first_errors=first_errors,
        source=source,
        model=job.model,
        priority=job.priority,
        copies=copies,
    )


def job_state(*, shards: int, committed: int, failed: int, cancelled: bool, interrupted: dict[str, Any] | None,
              running: list[int] | None, broker: str, rows_done: int, row_errors: int,
              max_error_rate: float) -> tuple[str, str]:
    """(state, note) of a job from its counts; the note says why it failed or stopped.

    complete    every shard committed, row errors within max_error_rate
    failed      every shard committed or failed, with a failed shard or too many row errors
    cancelled   ``batchformers cancel``
    interrupted ``run`` was stopped with its embedded broker, the job was never enqueued,
                or the broker cannot be reached: nothing runs it now
    queued      nothing committed, failed or running yet
    running     otherwise
    """
    if cancelled and committed < shards:
        return "cancelled", ""
    finished = outcome(shards, committed, failed, rows_done, row_errors, max_error_rate)
    if finished is not None:
        return finished
    if interrupted is not None:
        return "interrupted", f"{interrupted.get('reason', 'interrupted')}; submit or run the job again to resume"
    if broker.startswith("unreachable"):
        return "interrupted", f"the broker is {broker}: no shard can run until it is back"
    if committed == 0 and failed == 0 and not running:
        return "queued", ""
    return "running", ""


def _first_errors(output: str, committed: list[int], count: int = FIRST_ERRORS) -> list[str]:
    """The first few distinct row errors, read from the parts (in shard order) until found."""
    from jobs.io.layout import OutputLayout

    layout = OutputLayout(output)
    found: list[str] = []
    for shard in committed:
        try:
            errors = layout.row_errors(shard)
        except (OSError, KeyError, ValueError):
            continue
        for error in errors:
            if error is not None and error not in found:
                found.append(error)
                if len(found) >= count:
                    return found
    return found


def _rate(tally: Tally, created_at: float) -> float | None:
    """Rows per second since the first commit's shard started (or since submit)."""
    if not tally.committed or tally.last_commit is None:
        return None
    first_start = tally.first_start if tally.first_start is not None else created_at
    elapsed = max(tally.last_commit - max(first_start, created_at), 1e-3)
    return tally.rows / elapsed
