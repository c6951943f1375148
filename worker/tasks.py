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
from jobs.io.layout import OutputLayout
from jobs.io.sources import SourceFile, file_stamp
from jobs.io.storage import Storage
from jobs.ledger import Ledger, marker_times
from jobs.manifest import Manifest, ShardPlan
from jobs.pinning import pinned_spec
from jobs.protocol import TASK_NAME, ShardMessage
from jobs.settings import Settings
from jobs.shard import run_shard
from jobs.spec import JobSpec
from worker import faults, metrics, takeover  # noqa: F401 - takeover: each worker scans for dead holders' shards
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
            _settle_committed(shard, layout, settings)
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
    ledger = Ledger.for_manifest(client, manifest, settings.retention_seconds)
    try:
        if not lease.acquire():
            delay = lease.wait_hint()
            log.warning("shard %s of job %s is running on %s; looking again in %.0fs", shard.shard,
                        shard.job_id, lease.current_holder(), delay)
            raise self.retry(countdown=delay, max_retries=None)
        try:
            ledger.started(shard.shard)
            deliveries = DeliveryCount(client, shard.job_id, shard.shard)
            return _run_leased(self, shard, layout, manifest, lease, deliveries, settings, ledger)
        finally:
            _stopped(ledger, shard.shard)
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
    ledger: Ledger | None = None,
) -> dict[str, Any]:
    if layout.is_committed(shard.shard):  # committed by the previous holder of the lease
        _settle_committed(shard, layout, settings, manifest, ledger)
        return {"shard": shard.shard, "skipped": "already committed"}
    spec = manifest.job_spec()
    plan = manifest.shards[shard.shard]
    allowed = spec.max_retries + 1
    attempt = deliveries.increment()
    if attempt > allowed:  # the runs allowed all started and none finished: a crash each time
        if layout.failed().get(shard.shard):  # another copy of the message got here first
            return {"shard": shard.shard, "skipped": "already failed"}
        error = deliveries.last_error() or WORKER_LOST.format(holder="an unknown worker")
        _fail(layout, shard, _gave_up(allowed, error), allowed, ledger)
    deliveries.record_error(WORKER_LOST.format(holder=lease.holder))
    if attempt > 1:
        log.warning("shard %s of job %s: attempt %s of %s", shard.shard, shard.job_id, attempt, allowed)
    faults.started(shard.shard)
    try:
        with lease.kept():
            _check_source(manifest.sources[plan.source], plan, settings)
            job_task, runner = runner_for(pinned_spec(spec, manifest), settings)  # the model pinned at submit
            table, summary = run_shard(manifest, plan, job_task, runner, _progress_reporter(task, plan.rows),
                                       overlap=settings.overlap)
            faults.before_commit(shard.shard)
            if not lease.held():
                log.error("shard %s of job %s: lease lost to %s; not committing", shard.shard, shard.job_id,
                          lease.current_holder())
                return {"shard": shard.shard, "skipped": "lease lost"}
            summary["attempt"] = attempt
            layout.commit(shard.shard, table, summary, fault=faults.commit_point)
            faults.commit_point(shard.shard, "committed")
    except Exception as exc:
        _after_error(task, layout, shard, spec, deliveries, attempt, exc, settings.lease_seconds, ledger)
    metrics.shard_committed(spec.task, summary)
    try:
        deliveries.clear()
    except redis.RedisError as exc:  # committed all the same: a stale count only expires later
        log.warning("cannot clear the delivery count of shard %s: %s", shard.shard, exc)
    _complete_if_last(layout, manifest, shard.shard, {**summary, "committed_at": time.time()}, ledger)
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
    ledger: Ledger | None = None,
) -> NoReturn:
    """Fail the shard now (permanent error, or no attempts left) or retry it after a backoff."""
    if isinstance(exc, redis.RedisError):
        raise exc
    error = _describe(exc)
    if is_permanent(exc):
        _fail(layout, shard, error, attempt, ledger)
    if attempt >= spec.max_retries + 1:
        _fail(layout, shard, _gave_up(attempt, error), attempt, ledger)
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


def _fail(layout: OutputLayout, shard: ShardMessage, error: str, attempts: int,
          ledger: Ledger | None = None) -> NoReturn:
    """Record the failure where ``status`` reads it, then fail the task (acked; Flower shows it)."""
    log.error("shard %s of job %s failed: %s", shard.shard, shard.job_id, error)
    layout.mark_failed(shard.shard, error, attempts=attempts)
    if ledger is not None:
        try:
            ledger.record_failure(shard.shard, error)
        except redis.RedisError as exc:  # the failure marker is written: status finds it by listing
            log.warning("cannot record the failure of shard %s on the broker: %s", shard.shard, exc)
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


def _complete_if_last(layout: OutputLayout, manifest: Manifest, shard: int | None = None,
                      marker: dict[str, Any] | None = None, ledger: Ledger | None = None) -> bool:
    """Count the commit of ``shard``; write _SUCCESS when it was the last. True for the one caller that wrote it.

    With a ledger (the broker's count of committed shards, :mod:`jobs.ledger`) this costs
    one Redis call, whatever the job's size; only the commit that completes the count lists
    the marker names, once, to check that every shard has its marker, and writes the
    ledger's totals into _SUCCESS. Without one (lost,
    expired, never written) the marker names are listed, without reading them, and the
    ledger is rebuilt from them. Shards finishing together may all see every shard
    committed; the marker is created with O_EXCL (a conditional put on object stores), so
    exactly one of them writes it.
    """
    total = len(manifest.shards)
    counted = None
    if ledger is not None and shard is not None and marker is not None:
        counted = ledger.record_commit(shard, marker)
        if counted is None:
            _rebuild(layout, manifest, ledger, shard)
            counted = ledger.record_commit(shard, marker)
    if counted is not None:
        fresh, count = counted
        if count < total or (not fresh and layout.is_complete()):
            return False
    elif len(layout.marker_numbers()[0]) < total:
        return False
    summary = _totals(layout, manifest, ledger if counted is not None else None)
    if summary is None:
        return False
    if not layout.mark_complete(summary):
        return False
    if ledger is not None:
        ledger.finish(summary["completed_at"])
    log.info("batchformers: job %s complete: %s rows", manifest.job_id, summary["rows"])
    return True


def _totals(layout: OutputLayout, manifest: Manifest, ledger: Ledger | None) -> dict[str, Any] | None:
    """The _SUCCESS summary after one pass over the markers; None when some shard has no marker after all.

    With a ledger the pass is a listing of the names (every shard must have its marker), and
    the totals are the ledger's, plus those of any marker it has not read (after a rebuild);
    without one, every marker is read.
    """
    total = len(manifest.shards)
    tally = None
    if ledger is not None:
        names = layout.marker_numbers()[0] & set(range(total))
        tally = ledger.read()
        if tally is not None and len(names) == total:
            for number, marker in layout.read_committed(sorted(tally.unread)).items():
                ledger.absorb(number, marker)
            tally = ledger.read() if tally.unread else tally
        if tally is None or tally.unread or len(names) < total:
            log.warning("job %s: the ledger counts every shard but %s of %s have a marker; rebuilding it",
                        manifest.job_id, len(names), total)
            ledger.drop()
            ledger.rebuild(names)
            return None
        rows, errors, first, last = tally.rows, tally.errors, tally.first_start, tally.last_commit
        truncated = tally.truncated
    else:
        markers = layout.read_committed(range(total))  # no ledger: read every marker, once
        if len(markers) < total:
            return None
        rows = sum(int(m["rows"]) for m in markers.values())
        errors = sum(int(m["errors"]) for m in markers.values())
        first = min(marker_times(m)[0] for m in markers.values())
        last = max(marker_times(m)[1] for m in markers.values())
        truncated = sum(int(m.get("truncated") or 0) for m in markers.values())
    return {"job_id": manifest.job_id, "rows": rows, "errors": errors, "truncated": truncated, "shards": total,
            "first_start": first, "last_commit": last, "completed_at": time.time()}


def _rebuild(layout: OutputLayout, manifest: Manifest, ledger: Ledger, shard: int) -> None:
    """A new ledger from the marker names (committed shards are not read; the few failed ones are)."""
    committed, failed = layout.marker_numbers()
    log.warning("job %s: no ledger on the broker; rebuilt from %s commit markers", manifest.job_id, len(committed))
    ledger.rebuild(committed - {shard})
    for number, record in layout.read_failed(sorted(failed - committed)).items():
        ledger.record_failure(number, str(record.get("error", "")))


def _settle_committed(shard: ShardMessage, layout: OutputLayout, settings: Settings,
                      manifest: Manifest | None = None, ledger: Ledger | None = None) -> None:
    """A delivery of a shard that is committed already: make sure the ledger counted it.

    A worker that died (or lost the broker) between writing the marker and counting it
    leaves its message unacked; this redelivered copy does the counting, and completes
    the job if that shard was the last.
    """
    try:
        manifest = manifest or manifest_for(shard, layout)
        ledger = ledger or Ledger.for_manifest(client_for(settings.broker_url), manifest,
                                               settings.retention_seconds)
        marker = layout.read_committed([shard.shard]).get(shard.shard)
        if marker is not None:
            _complete_if_last(layout, manifest, shard.shard, marker, ledger)
    except (BatchformersError, OSError, redis.RedisError) as exc:
        log.warning("shard %s of job %s is committed; cannot count it on the broker now: %s", shard.shard,
                    shard.job_id, exc)


def _stopped(ledger: Ledger, shard: int) -> None:
    try:
        ledger.stopped(shard)
    except redis.RedisError as exc:  # status checks the lease as well: a stale entry shows as not running
        log.debug("cannot clear the running entry of shard %s: %s", shard, exc)


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
