"""The shard task: decode the message, run the shard through ``jobs``, commit, map errors.

Everything about the NLP lives in ``jobs``; this module only decides what a
failure means (retry or give up) and keeps the job's markers right:

- a shard runs only under its lease (:mod:`worker.lease`), so never twice at once;
- every start is counted (:mod:`worker.deliveries`), so a shard that kills its worker
  is marked failed after ``1 + max_retries`` starts instead of looping;
- permanent errors (a bad spec, an input that is gone or changed, a model that cannot
  be loaded) fail the shard at once; transient ones are retried with backoff.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from jobs.errors import BatchformersError, InputError, RetryableError, ShardError
from jobs.layout import OutputLayout
from jobs.manifest import Manifest, ShardPlan
from jobs.message import TASK_NAME, ShardMessage
from jobs.settings import Settings
from jobs.shard import run_shard
from jobs.sources import SourceFile, file_stamp
from jobs.spec import JobSpec
from jobs.storage import Storage
from worker import faults, metrics
from worker.app import app
from worker.deliveries import DeliveryCount
from worker.lease import ShardLease, client_for, worker_identity
from worker.runners import runner_for

log = logging.getLogger(__name__)
PROGRESS_STATE = "PROGRESS"
PROGRESS_INTERVAL = 1.0
RETRY_BACKOFF = 2.0
MAX_RETRY_DELAY = 60.0
OUTPUT_RETRIES = 10  # times a shard waits for an unreadable output location before it is dropped
BROKER_PAUSE = 5.0  # seconds to wait before giving a shard back when the broker is unreachable
WORKER_LOST = "the worker running this shard was lost (killed, out of memory or crashed) on {holder}"
# Causes that make an otherwise permanent error worth retrying: the network, not the data.
TRANSIENT_CAUSES: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
TRANSIENT_NAMES = ("Connect", "Timeout")  # httpx.ConnectError, requests' ConnectionError, ReadTimeout ...

_manifests: dict[tuple[str, str], Manifest] = {}


def manifest_for(message: ShardMessage, layout: OutputLayout) -> Manifest:
    key = (message.job_id, message.output)
    if key not in _manifests:
        manifest = layout.read_manifest()
        if manifest.job_id != message.job_id:
            raise BatchformersError(
                f"{message.output} now holds job {manifest.job_id}, not {message.job_id}; dropping this shard"
            )
        _manifests[key] = manifest
    return _manifests[key]


class ShardTask(Task):  # type: ignore[misc]
    acks_late = True
    reject_on_worker_lost = True
    acks_on_timeout = False  # killed at the hard time limit: requeue; the delivery count bounds it
    max_retries = None  # bounded per job by the spec's max_retries, counted in Redis


@app.task(bind=True, base=ShardTask, name=TASK_NAME)
def run_shard_task(self: ShardTask, message: dict[str, Any]) -> dict[str, Any]:
    settings = Settings()
    try:
        shard = ShardMessage.from_dict(message)
    except (KeyError, TypeError) as exc:
        log.error("dropping a malformed shard message (%r): %s", exc, message)
        return {"skipped": "malformed message"}
    if not settings.allows(shard.output):
        log.error("dropping shard %s of job %s: output %s is outside BATCHFORMERS_ALLOWED_ROOTS", shard.shard,
                  shard.job_id, shard.output)
        return {"shard": shard.shard, "skipped": "output outside the allowed roots"}
    layout = OutputLayout(shard.output)
    try:
        if layout.is_committed(shard.shard):
            return {"shard": shard.shard, "skipped": "already committed"}
        if layout.is_cancelled():
            return {"shard": shard.shard, "skipped": "job cancelled"}
        manifest = manifest_for(shard, layout)
    except BatchformersError as exc:
        log.error("dropping shard %s of job %s: %s", shard.shard, shard.job_id, exc)
        return {"shard": shard.shard, "skipped": str(exc)}
    except OSError as exc:  # the output storage is unreachable for now
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries + 1, settings.lease_seconds),
                         max_retries=OUTPUT_RETRIES) from exc
    if not 0 <= shard.shard < len(manifest.shards):
        log.error("dropping shard %s of job %s: the job has %s shards", shard.shard, shard.job_id,
                  len(manifest.shards))
        return {"shard": shard.shard, "skipped": "no such shard"}
    client = client_for(settings.broker_url)
    lease = ShardLease(client, shard.job_id, shard.shard, worker_identity(self.request.hostname),
                       settings.lease_seconds)
    try:
        if not lease.acquire():
            delay = lease.wait_hint()
            log.warning("shard %s of job %s is running on %s; looking again in %.0fs", shard.shard,
                        shard.job_id, lease.current_holder(), delay)
            raise self.retry(countdown=delay, max_retries=None)
        try:
            deliveries = DeliveryCount(client, shard.job_id, shard.shard)
            return _run_leased(self, shard, layout, manifest, lease, deliveries, settings)
        finally:
            lease.release()
    except redis.RedisError as exc:
        # The broker went away while we were keeping the shard's books. Requeue the message
        # (or, if the broker is still down, leave it unacked for the visibility timeout).
        log.warning("shard %s of job %s: broker unreachable (%s); giving the shard back", shard.shard,
                    shard.job_id, exc)
        time.sleep(min(BROKER_PAUSE, settings.lease_seconds / 3))
        raise Reject(exc, requeue=True) from exc


def _run_leased(
    task: ShardTask,
    shard: ShardMessage,
    layout: OutputLayout,
    manifest: Manifest,
    lease: ShardLease,
    deliveries: DeliveryCount,
    settings: Settings,
) -> dict[str, Any]:
    if layout.is_committed(shard.shard):  # committed by the previous holder of the lease
        return {"shard": shard.shard, "skipped": "already committed"}
    spec = manifest.job_spec()
    plan = manifest.shards[shard.shard]
    allowed = spec.max_retries + 1
    attempt = deliveries.increment()
    if attempt > allowed:  # the runs allowed all started and none finished: a crash each time
        if layout.failed().get(shard.shard):  # another copy of the message got here first
            return {"shard": shard.shard, "skipped": "already failed"}
        error = deliveries.last_error() or WORKER_LOST.format(holder="an unknown worker")
        _fail(layout, shard, _gave_up(allowed, error), allowed)
    deliveries.record_error(WORKER_LOST.format(holder=lease.holder))
    if attempt > 1:
        log.warning("shard %s of job %s: attempt %s of %s", shard.shard, shard.job_id, attempt, allowed)
    faults.started(shard.shard)
    try:
        with lease.kept():
            _check_source(manifest.sources[plan.source], plan, settings)
            job_task, runner = runner_for(spec, settings)
            table, summary = run_shard(manifest, plan, job_task, runner, _progress_reporter(task, plan.rows))
            faults.before_commit(shard.shard)
            if not lease.held():
                log.error("shard %s of job %s: lease lost to %s; not committing", shard.shard, shard.job_id,
                          lease.current_holder())
                return {"shard": shard.shard, "skipped": "lease lost"}
            summary["attempt"] = attempt
            layout.commit(shard.shard, table, summary, fault=faults.commit_point)
            faults.commit_point(shard.shard, "committed")
    except Exception as exc:
        _after_error(task, layout, shard, spec, deliveries, attempt, exc, settings.lease_seconds)
    metrics.shard_committed(spec.task, summary)
    try:
        deliveries.clear()
    except redis.RedisError as exc:  # committed all the same: a stale count only expires later
        log.warning("cannot clear the delivery count of shard %s: %s", shard.shard, exc)
    _complete_if_last(layout, manifest)
    return {"shard": shard.shard, "job": shard.job_id, **summary}


def _after_error(
    task: ShardTask,
    layout: OutputLayout,
    shard: ShardMessage,
    spec: JobSpec,
    deliveries: DeliveryCount,
    attempt: int,
    exc: Exception,
    lease_seconds: float,
) -> NoReturn:
    """Fail the shard now (permanent error, or no attempts left) or retry it after a backoff."""
    if isinstance(exc, redis.RedisError):
        raise exc
    error = _describe(exc)
    if is_permanent(exc):
        _fail(layout, shard, error, attempt)
    if attempt >= spec.max_retries + 1:
        _fail(layout, shard, _gave_up(attempt, error), attempt)
    deliveries.record_error(error)
    delay = _backoff(attempt, lease_seconds)
    log.warning("shard %s of job %s: attempt %s failed (%s); retrying in %.0fs", shard.shard, shard.job_id,
                attempt, error, delay)
    raise task.retry(exc=exc, countdown=delay, max_retries=None)


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


def _fail(layout: OutputLayout, shard: ShardMessage, error: str, attempts: int) -> NoReturn:
    """Record the failure where ``status`` reads it, then fail the task (acked; Flower shows it)."""
    log.error("shard %s of job %s failed: %s", shard.shard, shard.job_id, error)
    layout.mark_failed(shard.shard, error, attempts=attempts)
    raise ShardError(f"shard {shard.shard} of job {shard.job_id} failed: {error}")


def _gave_up(attempts: int, error: str) -> str:
    return f"gave up after {attempts} attempt{'s' if attempts > 1 else ''}; last: {error}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SoftTimeLimitExceeded):
        return "the shard ran past its time limit; raise shard_time_limit or lower shard_rows"
    if isinstance(exc, BatchformersError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _check_source(source: SourceFile, plan: ShardPlan, settings: Settings) -> None:
    """The input file must be where it was at submit, unchanged (same size and time)."""
    if not settings.allows(source.url):
        raise InputError(f"input file {source.url} is outside BATCHFORMERS_ALLOWED_ROOTS on this worker")
    storage = Storage.at(source.url)
    if storage.remote:
        storage.fs.invalidate_cache(storage.root)
    try:
        size, modified = file_stamp(storage, storage.root)
    except FileNotFoundError:
        raise InputError(
            f"input file {source.url} (rows {plan.start}-{plan.stop}) is gone since the job was submitted; "
            "restore it, or resubmit the job with a new output"
        ) from None
    if size != source.size or modified != source.modified:
        raise InputError(
            f"input file {source.url} changed since the job was submitted (size {source.size} -> {size}, "
            f"modified {source.modified} -> {modified}); resubmit the job with a new output to process it"
        )


def _backoff(attempt: int, lease_seconds: float) -> float:
    """Exponential, at most a minute, and at most a lease: a countdown held by a worker past the
    visibility timeout (2 leases) would be redelivered while it still waits."""
    return float(min(MAX_RETRY_DELAY, lease_seconds, RETRY_BACKOFF**attempt))


def _complete_if_last(layout: OutputLayout, manifest: Manifest) -> bool:
    """Write _SUCCESS when every shard is committed; True for the one caller that wrote it.

    Shards finishing together may all see every shard committed; the marker is created
    with O_EXCL (a conditional put on object stores), so exactly one of them writes it.
    """
    committed = layout.committed()
    if len(committed) < len(manifest.shards):
        return False
    summary = {
        "job_id": manifest.job_id,
        "rows": sum(m["rows"] for m in committed.values()),
        "errors": sum(m["errors"] for m in committed.values()),
        "shards": len(committed),
        "completed_at": time.time(),
    }
    if not layout.mark_complete(summary):
        return False
    log.warning("batchformers: job %s complete: %s rows", manifest.job_id, summary["rows"])
    return True


def _progress_reporter(task: ShardTask, total: int) -> Any:
    """Report rows done as a custom state, at most once a second (Flower shows it)."""
    done = 0
    last = 0.0

    def report(rows: int) -> None:
        nonlocal done, last
        done += rows
        now = time.monotonic()
        if task.request.id and (now - last >= PROGRESS_INTERVAL or done >= total):
            last = now
            try:
                task.update_state(state=PROGRESS_STATE, meta={"done": done, "total": total})
            except Exception as exc:  # progress is best effort: a broker hiccup must not fail the shard
                log.debug("cannot report progress: %s", exc)

    return report
