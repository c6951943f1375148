"""A shard's lifecycle: check its input, run it, commit it, and decide what a failure means. No Celery here.

:func:`run_and_commit` is the whole life of one attempt, called by the worker task once it
holds the shard's lease (``worker.lease``):

- the attempt is counted first (``worker.deliveries``), so a shard that kills its worker is
  marked failed after ``1 + max_retries`` starts instead of looping;
- the input must be where it was at submit, unchanged (:func:`jobs.io.sources.check_source`);
- the rows are run (:func:`run_shard`, a step at a time: :mod:`jobs.pieces`) and, if the lease is
  still ours (confirmed on the broker), the output still holds the job and the shard is not
  committed yet, committed in pieces (:mod:`jobs.io.pieces`; a short shard is one piece), then
  its marker written and counted towards the job's completion (:mod:`jobs.io.completion`);
- permanent errors (a bad spec, an input that is gone or changed, a model that cannot be
  loaded) fail the shard at once (:class:`~jobs.errors.ShardError`); transient ones raise
  :class:`RetryLater` with a backoff, which the worker turns into a Celery retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import numpy as np
import pyarrow as pa
import redis

from jobs.engine.base import ERROR, ProgressCallback, Runner, TaskType, with_error
from jobs.errors import BatchformersError, RetryableError, ShardError
from jobs.io.completion import complete_if_last, count_committed
from jobs.io.layout import OutputLayout
from jobs.io.pieces import ShardPieces
from jobs.io.sources import check_source, read_rows
from jobs.ledger import Ledger
from jobs.manifest import Manifest, ShardPlan
from jobs.pieces import PieceHooks, run_in_pieces
from jobs.pinning import pinned_spec
from jobs.settings import Settings
from jobs.spec import JobSpec

log = logging.getLogger(__name__)
RETRY_BACKOFF = 2.0
MAX_RETRY_DELAY = 60.0
WORKER_LOST = "the worker running this shard was lost (killed, out of memory or crashed) on {holder}"
# Causes that make an otherwise permanent error worth retrying: the network, not the data.
TRANSIENT_CAUSES: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
TRANSIENT_NAMES = ("Connect", "Timeout")  # httpx.ConnectError, requests' ConnectionError, ReadTimeout ...
TIME_LIMIT_MESSAGE = "the shard ran past its time limit; raise shard_time_limit or lower shard_rows"

ROW_INDEX = "row_index"
TRUNCATED = "truncated"


class RetryLater(Exception):  # noqa: N818 - a decision, not an error
    """Raised by :func:`run_and_commit` when the attempt failed and the shard should run again in ``delay`` s."""

    def __init__(self, error: str, delay: float) -> None:
        super().__init__(error)
        self.error = error
        self.delay = delay


class Attempts(Protocol):
    """A shard's start count and last error on the broker (``worker.deliveries.DeliveryCount``)."""

    def increment(self) -> int: ...
    def record_error(self, error: str) -> None: ...
    def last_error(self) -> str | None: ...
    def clear(self) -> None: ...


class Lease(Protocol):
    """The worker's hold on the shard (``worker.lease.ShardLease``)."""

    holder: str

    def kept(self) -> AbstractContextManager[None]: ...
    def held(self) -> bool: ...
    def current_holder(self) -> str | None: ...


def _nothing(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    """What the worker adds along the way: fault injection (``worker.faults``) and metrics
    (``worker.metrics``). Each does nothing by default."""

    started: Callable[[int], None] = _nothing  # the attempt is counted and about to run
    before_commit: Callable[[int], None] = _nothing  # the last rows are done, the shard's last piece not written yet
    commit_point: Callable[[int, str], None] = _nothing  # inside the commit (jobs.io.layout.COMMIT_POINTS)
    committed: Callable[[str, dict[str, Any]], None] = _nothing  # (task name, summary) once committed
    model_load: Callable[[], float | None] = _nothing  # seconds the last load spent loading; None: it was loaded
    step: Callable[[int, int, int], None] = _nothing  # (shard, start, stop): rows about to run (jobs.pieces)
    before_piece: Callable[[int], None] = _nothing  # an earlier piece of the shard is about to be committed
    after_piece: Callable[[int, int], None] = _nothing  # (shard, stop): that piece's commit is over (-1: not ours)


Load = Callable[[JobSpec, Settings], tuple[TaskType, Runner]]  # worker.runners.runner_for


def run_and_commit(
    manifest: Manifest,
    shard: int,
    layout: OutputLayout,
    lease: Lease,
    attempts: Attempts,
    ledger: Ledger | None,
    settings: Settings,
    load: Load,
    *,
    progress: ProgressCallback | None = None,
    hooks: Hooks | None = None,
    time_limits: tuple[type[BaseException], ...] = (),
    enqueued_at: float | None = None,
    copy: bool = False,
) -> dict[str, Any]:
    """One attempt of ``shard`` under ``lease``: what the task returns (a summary, or why it was skipped).

    Raises :class:`~jobs.errors.ShardError` when the shard failed for good (its failure marker
    is written), :class:`RetryLater` when it should run again, and ``redis.RedisError`` when the
    broker went away (the worker gives the message back). ``time_limits`` are the exceptions
    that mean "the shard ran past its time limit" (Celery's ``SoftTimeLimitExceeded``). ``enqueued_at``:
    when the message was sent (``ShardMessage.enqueued_at``), for the queue wait the marker records. A ``copy``
    (:mod:`jobs.speculation`) counts no attempt and never fails the shard: its errors only end the copy.
    """
    started_at = time.time()  # the lease is held: the shard starts now
    hooks = hooks or Hooks()
    if layout.is_committed(shard):  # committed by the previous holder of the lease
        if ledger is not None:
            try:
                count_committed(layout, manifest, shard, ledger)
            except (BatchformersError, OSError, redis.RedisError) as exc:
                log.warning("shard %s of job %s is committed; cannot count it on the broker now: %s", shard,
                            manifest.job_id, exc)
        return {"shard": shard, "skipped": "already committed"}
    spec = manifest.job_spec()
    plan = manifest.shards[shard]
    allowed = spec.max_retries + 1
    attempt = 0 if copy else attempts.increment()
    if attempt > allowed:  # the runs allowed all started and none finished: a crash each time
        if layout.read_failed([shard]):  # another copy of the message got here first
            return {"shard": shard, "skipped": "already failed"}
        error = attempts.last_error() or WORKER_LOST.format(holder="an unknown worker")
        fail(layout, manifest.job_id, shard, gave_up(allowed, error), allowed, ledger)
    if not copy:
        attempts.record_error(WORKER_LOST.format(holder=lease.holder))
    if attempt > 1:
        log.warning("shard %s of job %s: attempt %s of %s", shard, manifest.job_id, attempt, allowed)
    hooks.started(shard)
    try:
        with lease.kept():
            check_source(manifest.sources[plan.source], plan.start, plan.stop, settings)
            task, runner = load(pinned_spec(spec, manifest), settings)  # the model pinned at submit
            loaded_in = hooks.model_load()

            def run(start: int, stop: int) -> tuple[pa.Table, dict[str, Any]]:
                rows = ShardPlan(plan.index, plan.source, plan.start + start, plan.start + stop)
                return run_shard(manifest, rows, task, runner, progress, overlap=settings.overlap, spec=spec)

            done = run_in_pieces(ShardPieces(layout, shard), plan.rows, run,
                                 lambda: _commit_refused(layout, manifest.job_id, shard, lease),
                                 step=settings.piece_rows, seconds=settings.piece_seconds, holder=lease.holder,
                                 hooks=_piece_hooks(hooks, shard))
            if done.skipped or (done.followed and layout.is_committed(shard)):  # the winner wrote the marker
                return {"shard": shard, "skipped": done.skipped or "already committed"}
            summary = {**done.summary, **done.totals(), "attempt": attempt, **({"copy": True} if copy else {})}
            summary.update(timing(lease.holder, started_at, enqueued_at, loaded_in))
            if len(done.pieces) > 1 or done.resumed_at:
                summary.update(pieces=len(done.pieces), resumed_at=done.resumed_at or 0)
            layout.write_marker(shard, summary, done.parts, done.write_seconds)
            hooks.commit_point(shard, "committed")
    except Exception as exc:
        if copy and not isinstance(exc, redis.RedisError):
            log.warning("copy of shard %s of job %s failed (%s); its holder goes on", shard, manifest.job_id, exc)
            return {"shard": shard, "skipped": f"copy failed: {error_text(exc)}"}
        _after_error(layout, manifest.job_id, shard, spec, attempts, attempt, exc, settings.lease_seconds, ledger,
                     time_limits)
    hooks.committed(spec.task, summary)
    try:
        attempts.clear()
    except redis.RedisError as exc:  # committed all the same: a stale count only expires later
        log.warning("cannot clear the delivery count of shard %s: %s", shard, exc)
    complete_if_last(layout, manifest, shard, {**summary, "committed_at": time.time()}, ledger)
    return {"shard": shard, "job": manifest.job_id, **summary}


def timing(worker_name: str, started_at: float, enqueued_at: float | None,
           model_load_seconds: float | None) -> dict[str, Any]:
    """What a commit marker records of where the shard's time went, besides its stages: who ran it
    (the Celery node name and process), when it started, how long its message waited (with retries'
    backoffs; only for messages that carry their send time) and the model load it paid, if any."""
    found: dict[str, Any] = {"worker_name": worker_name, "started_at": round(started_at, 3)}
    if enqueued_at is not None:
        found["queue_wait_seconds"] = round(max(0.0, started_at - enqueued_at), 3)
    if model_load_seconds is not None:
        found["model_load_seconds"] = round(model_load_seconds, 3)
    return found


def _piece_hooks(hooks: Hooks, shard: int) -> PieceHooks:
    return PieceHooks(step=lambda start, stop: hooks.step(shard, start, stop),
                      before_last=lambda: hooks.before_commit(shard),
                      before_piece=lambda: hooks.before_piece(shard),
                      after_piece=lambda stop: hooks.after_piece(shard, stop), commit_point=hooks.commit_point)


def _commit_refused(layout: OutputLayout, job_id: str, shard: int, lease: Lease) -> str | None:
    """Why this run must not commit (a piece, or the shard) now; None when it may."""
    if not lease.held():  # raises redis.RedisError when it cannot tell: the shard is given back
        log.error("shard %s of job %s: lease lost to %s; not committing", shard, job_id, lease.current_holder())
        return "lease lost"
    return _not_ours_to_commit(layout, job_id, shard)


def _not_ours_to_commit(layout: OutputLayout, job_id: str, shard: int) -> str | None:
    """Why this run must not commit although it holds the lease, read afresh from the output: the output
    now holds another job (a concurrent submit took it), or the shard was committed meanwhile (by a run
    that took over from this one while it was paused; the part may have been compacted away since)."""
    if not layout.holds_job(job_id):
        log.error("shard %s of job %s: the output now holds another job; not committing", shard, job_id)
        return "the output holds another job"
    if layout.is_committed(shard):
        log.warning("shard %s of job %s was committed by another run meanwhile; not committing", shard, job_id)
        return "already committed"
    return None


def _after_error(layout: OutputLayout, job_id: str, shard: int, spec: JobSpec, attempts: Attempts, attempt: int,
                 exc: Exception, lease_seconds: float, ledger: Ledger | None,
                 time_limits: tuple[type[BaseException], ...]) -> NoReturn:
    """Fail the shard now (permanent error, or no attempts left) or ask for a retry after a backoff."""
    if isinstance(exc, redis.RedisError):
        raise exc
    error = TIME_LIMIT_MESSAGE if isinstance(exc, time_limits) else error_text(exc)
    if is_permanent(exc):
        fail(layout, job_id, shard, error, attempt, ledger)
    if attempt >= spec.max_retries + 1:
        fail(layout, job_id, shard, gave_up(attempt, error), attempt, ledger)
    attempts.record_error(error)
    delay = backoff(attempt, lease_seconds)
    log.warning("shard %s of job %s: attempt %s failed (%s); retrying in %.0fs", shard, job_id, attempt, error, delay)
    raise RetryLater(error, delay) from exc


def is_permanent(exc: BaseException) -> bool:
    """Errors that another attempt cannot fix, unless the network caused them."""
    if isinstance(exc, RetryableError) or not isinstance(exc, BatchformersError):
        return False
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        name = type(cause).__name__
        if isinstance(cause, TRANSIENT_CAUSES) or any(word in name for word in TRANSIENT_NAMES):
            return False
        cause = cause.__cause__ or cause.__context__
    return True


def fail(layout: OutputLayout, job_id: str, shard: int, error: str, attempts: int,
         ledger: Ledger | None = None) -> NoReturn:
    """Record the failure where ``status`` reads it, then raise ShardError (the task fails; Flower shows it)."""
    log.error("shard %s of job %s failed: %s", shard, job_id, error)
    layout.mark_failed(shard, error, attempts=attempts)
    if ledger is not None:
        try:
            ledger.record_failure(shard, error)
        except redis.RedisError as exc:  # the failure marker is written: status finds it by listing
            log.warning("cannot record the failure of shard %s on the broker: %s", shard, exc)
    raise ShardError(f"shard {shard} of job {job_id} failed: {error}")


def gave_up(attempts: int, error: str) -> str:
    return f"gave up after {attempts} attempt{'s' if attempts > 1 else ''}; last: {error}"


def error_text(exc: BaseException) -> str:
    if isinstance(exc, BatchformersError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def backoff(attempt: int, lease_seconds: float) -> float:
    """Exponential, at most a minute, and at most a lease: a countdown held by a worker past the
    visibility timeout (2 leases) would be redelivered while it still waits."""
    return float(min(MAX_RETRY_DELAY, lease_seconds, RETRY_BACKOFF**attempt))


def output_schema(task: TaskType, kept: pa.Schema) -> pa.Schema:
    """Kept input columns, ``row_index``, the task's columns, then ``error``."""
    fields = list(kept) + [pa.field(ROW_INDEX, pa.int64())]
    return pa.schema(fields + list(with_error(task.output_schema())))


def first_row(manifest: Manifest, plan: ShardPlan) -> int:
    """Global index of the shard's first row across all input files."""
    return sum(source.num_rows for source in manifest.sources[: plan.source]) + plan.start


def run_shard(
    manifest: Manifest,
    plan: ShardPlan,
    task: TaskType,
    runner: Runner,
    progress: ProgressCallback | None = None,
    overlap: bool = True,
    spec: JobSpec | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """The shard's output table and a summary (rows, errors, seconds); ``spec``: the manifest's, validated already."""
    started = time.monotonic()
    spec = spec or manifest.job_spec()
    roles = spec.input_columns()
    kept = spec.kept_columns()
    wanted = list(dict.fromkeys(kept + list(roles.values())))
    table = read_rows(manifest.sources[plan.source], plan.start, plan.stop, wanted)
    read_seconds = time.monotonic() - started
    inputs = {role: table.column(column).to_pylist() for role, column in roles.items()}
    base = first_row(manifest, plan)
    if runner.wants_row_index:  # per-row seeds that do not depend on the sharding
        inputs[ROW_INDEX] = list(range(base, base + table.num_rows))
    produced, stats = runner.run_table(inputs, progress, spec.run_options(overlap))
    kept_table = table.select(kept)
    schema = output_schema(task, kept_table.schema)
    columns = list(kept_table.columns) + [pa.array(np.arange(base, base + table.num_rows, dtype=np.int64))]
    columns += [produced.column(name) for name in with_error(task.output_schema()).names]
    output = pa.Table.from_arrays(columns, schema=schema)
    errors = table.num_rows - output.column(ERROR).null_count
    summary = {"rows": table.num_rows, "errors": errors, "seconds": round(time.monotonic() - started, 3)}
    if stats.batches:
        summary.update(batches=stats.batches, tokens=stats.tokens, padded_tokens=stats.padded_tokens)
    summary["stages"] = {"read": round(read_seconds, 4), **stats.stage_seconds()}
    if TRUNCATED in output.schema.names:  # issue 12: rows cut to the model's length, counted for status
        summary[TRUNCATED] = truncated_rows(output)
    return output, summary


def truncated_rows(output: pa.Table) -> int:
    """Rows whose ``truncated`` column is true (0 when the task has no such column)."""
    if TRUNCATED not in output.schema.names:
        return 0
    return int(sum(1 for value in output.column(TRUNCATED).to_pylist() if value))
