"""The shard task: decode the message, take the lease, call :func:`jobs.shard.run_and_commit`, map the outcome.

Everything about the shard's life (counting attempts, checking the input, running,
committing, completing the job, what a failure means) lives in :mod:`jobs.shard`; this
module only adds what needs Celery or the worker process:

- a shard runs only under its lease (:mod:`worker.lease`), so never twice at once;
- its starts are counted on the broker (:mod:`worker.deliveries`);
- ``RetryLater`` becomes a Celery retry, a lost broker a requeued message, and an
  unreadable output location a few retries before the message is dropped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from jobs import dispatch, speculation, status_record
from jobs.broker import safe_url
from jobs.errors import BatchformersError
from jobs.io.completion import count_committed
from jobs.io.layout import OutputLayout
from jobs.ledger import Ledger
from jobs.manifest import Manifest
from jobs.protocol import TASK_NAME, ShardMessage, copy_lease_key
from jobs.settings import Settings
from jobs.shard import Hooks, RetryLater, backoff, run_and_commit
from worker import drain, faults, metrics, recovery_scans  # noqa: F401 - recovery_scans: each worker scans for lost shards
from worker.app import app
from worker.deliveries import DeliveryCount
from worker.lease import ShardLease, client_for, worker_identity
from worker.runners import runner_for, take_load_seconds

log = logging.getLogger(__name__)
PROGRESS_STATE = "PROGRESS"
PROGRESS_INTERVAL = 1.0
OUTPUT_RETRIES = 10  # times a shard waits for an unreadable output location before it is dropped
BROKER_PAUSE = 5.0  # seconds to wait before giving a shard back when the broker is unreachable


def _started(shard: int) -> None:
    drain.allow(shard)  # a stopping worker may give the shard back until its rows are done
    faults.started(shard)


def _before_commit(shard: int) -> None:
    faults.before_commit(shard)  # a slow shard in the tests: still inside the rows' time
    drain.forbid(shard)


def _after_piece(shard: int, stop: int) -> None:
    if stop >= 0:
        metrics.piece_committed()
        faults.piece_committed(shard)
    drain.resume(shard)  # a give-back asked for during the piece's commit takes effect now


HOOKS = Hooks(started=_started, before_commit=_before_commit, commit_point=faults.commit_point,
              committed=metrics.shard_committed, model_load=take_load_seconds, step=faults.step,
              before_piece=drain.forbid, after_piece=_after_piece)

_manifests: dict[tuple[str, str], Manifest] = {}


@functools.cache
def worker_settings() -> Settings:
    """This process's settings, read from its environment once: it does not change under a running worker,
    and reading it costs a millisecond or more per shard."""
    return Settings()


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
    settings = worker_settings()
    try:
        shard = ShardMessage.from_dict(message)
    except (KeyError, TypeError) as exc:
        log.error("dropping a malformed shard message (%r)", exc)  # its fields may hold credentials
        return {"skipped": "malformed message"}
    if not settings.allows(shard.output):
        log.error("dropping shard %s of job %s: output %s is outside BATCHFORMERS_ALLOWED_ROOTS", shard.shard,
                  shard.job_id, safe_url(shard.output))
        return {"shard": shard.shard, "skipped": "output outside the allowed roots"}
    layout = OutputLayout(shard.output)
    try:
        if layout.is_committed(shard.shard):
            _settle_committed(shard, layout, settings)
            return {"shard": shard.shard, "skipped": "already committed"}
        if layout.is_cancelled():
            _mirror_cancel(shard.job_id, settings)
            return {"shard": shard.shard, "skipped": "job cancelled"}
        manifest = manifest_for(shard, layout)
    except BatchformersError as exc:
        log.error("dropping shard %s of job %s: %s", shard.shard, shard.job_id, exc)
        return {"shard": shard.shard, "skipped": str(exc)}
    except OSError as exc:  # the output storage is unreachable for now
        raise self.retry(exc=exc, countdown=backoff(self.request.retries + 1, settings.lease_seconds),
                         max_retries=OUTPUT_RETRIES) from exc
    if not 0 <= shard.shard < len(manifest.shards):
        log.error("dropping shard %s of job %s: the job has %s shards", shard.shard, shard.job_id,
                  len(manifest.shards))
        return {"shard": shard.shard, "skipped": "no such shard"}
    client = client_for(settings.broker_url)
    lease = ShardLease(client, shard.job_id, shard.shard, worker_identity(self.request.hostname),
                       settings.lease_seconds, key=copy_lease_key(shard.job_id, shard.shard) if shard.copy else None)
    ledger = Ledger.for_manifest(client, manifest, settings.retention_seconds)
    try:
        if not lease.acquire():
            if shard.copy:
                return {"shard": shard.shard, "skipped": "a copy of it runs already"}
            delay = lease.wait_hint()
            log.warning("shard %s of job %s is running on %s; looking again in %.0fs", shard.shard,
                        shard.job_id, lease.current_holder(), delay)
            raise self.retry(countdown=delay, max_retries=None)
        counted = False
        attempts = DeliveryCount(client, shard.job_id, shard.shard)
        try:
            if not shard.copy:  # a copy runs beside the holder: the running entry and its start are the holder's
                ledger.started(shard.shard)
                speculation.started(client, shard.job_id, shard.shard)
            result = run_and_commit(
                manifest, shard.shard, layout, lease, attempts, ledger,
                settings, runner_for, progress=_progress_reporter(self, manifest.shards[shard.shard].rows), hooks=HOOKS,
                time_limits=(SoftTimeLimitExceeded,), enqueued_at=shard.enqueued_at, copy=shard.copy)
            counted = "skipped" not in result  # counting the commit took the shard off the running set
            if shard.copy:
                metrics.copy_finished(won="skipped" not in result)
        except RetryLater as retry:
            raise self.retry(exc=retry.__cause__, countdown=retry.delay, max_retries=None) from retry
        except drain.ShardGivenBack as given_back:
            if shard.copy:  # the holder still runs the shard: a preempted copy is simply dropped
                raise Reject(str(given_back), requeue=False) from None
            attempts.give_back()
            lease.release()  # before the copy is sent: a worker that takes it at once must find the shard free
            try:  # at the head of its queue, so the next free worker takes it before the shards behind it
                dispatch.send_first(manifest, layout, shard.shard, settings, self.app)
            except Exception as exc:  # noqa: BLE001 - the broker going away ...: kombu's requeue, or redelivery
                log.warning("shard %s of job %s: given back, requeued at the end (%s)", shard.shard, shard.job_id, exc)
                raise Reject(str(given_back), requeue=True) from None
            log.warning("shard %s of job %s: given back, the worker is stopping; requeued first", shard.shard,
                        shard.job_id)
            raise Reject(str(given_back), requeue=False) from None  # acked: the copy sent first replaces it
        finally:
            drain.forbid()
            # A copy leaves the holder's running entry alone; so does a run whose lease another worker took:
            # the entry is the new holder's, and takeover finds it there if that holder dies too.
            if not counted and not shard.copy and not lease.lost:
                _stopped(ledger, shard.shard)
            lease.release()
    except redis.RedisError as exc:
        # The broker went away while we were keeping the shard's books. Requeue the message
        # (or, if the broker is still down, leave it unacked for the visibility timeout).
        log.warning("shard %s of job %s: broker unreachable (%s); giving the shard back", shard.shard,
                    shard.job_id, exc)
        time.sleep(min(BROKER_PAUSE, settings.lease_seconds / 3))
        raise Reject(exc, requeue=True) from exc
    return result


def _settle_committed(shard: ShardMessage, layout: OutputLayout, settings: Settings) -> None:
    """A delivery of a committed shard: have the ledger count it (best effort; see jobs.io.completion)."""
    try:
        manifest = manifest_for(shard, layout)
        ledger = Ledger.for_manifest(client_for(settings.broker_url), manifest, settings.retention_seconds)
        count_committed(layout, manifest, shard.shard, ledger)
    except (BatchformersError, OSError, redis.RedisError) as exc:
        log.warning("shard %s of job %s is committed; cannot count it on the broker now: %s", shard.shard,
                    shard.job_id, exc)


def _mirror_cancel(job_id: str, settings: Settings) -> None:
    """A cancel written while the broker was down reaches the job's status record here (best effort)."""
    with contextlib.suppress(redis.RedisError):
        status_record.set_flag(client_for(settings.broker_url), job_id, "cancelled", True)


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
