"""The shard task: decode the message, run the shard through ``jobs``, commit, map errors.

Everything about the NLP lives in ``jobs``; this module only decides what a
failure means (retry or give up) and keeps the job's markers right.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task

from jobs.errors import BatchformersError, RetryableError
from jobs.layout import OutputLayout
from jobs.manifest import Manifest
from jobs.message import TASK_NAME, ShardMessage
from jobs.settings import Settings
from jobs.shard import run_shard
from worker.app import app
from worker.runners import runner_for

log = logging.getLogger(__name__)
PROGRESS_STATE = "PROGRESS"
PROGRESS_INTERVAL = 1.0
RETRY_BACKOFF = 2.0
MAX_RETRY_DELAY = 60.0

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
    max_retries = None  # bounded per job by the spec's max_retries


@app.task(bind=True, base=ShardTask, name=TASK_NAME)
def run_shard_task(self: ShardTask, message: dict[str, Any]) -> dict[str, Any]:
    shard = ShardMessage.from_dict(message)
    layout = OutputLayout(shard.output)
    if layout.is_committed(shard.shard):
        return {"shard": shard.shard, "skipped": "already committed"}
    if layout.is_cancelled():
        return {"shard": shard.shard, "skipped": "job cancelled"}
    manifest = manifest_for(shard, layout)
    spec = manifest.job_spec()
    plan = manifest.shards[shard.shard]
    try:
        task, runner = runner_for(spec, Settings())
        table, summary = run_shard(manifest, plan, task, runner, _progress_reporter(self, plan.rows))
    except RetryableError as exc:
        return _retry_or_fail(self, layout, shard, spec.max_retries, exc)
    except BatchformersError as exc:
        log.error("shard %s of job %s failed: %s", shard.shard, shard.job_id, exc)
        layout.mark_failed(shard.shard, str(exc), attempts=self.request.retries + 1)
        raise
    except Exception as exc:  # an unexpected fault: maybe transient, so retry a bounded number of times
        return _retry_or_fail(self, layout, shard, spec.max_retries, exc)
    layout.commit(shard.shard, table, summary)
    _complete_if_last(layout, manifest)
    return {"shard": shard.shard, "job": shard.job_id, **summary}


def _retry_or_fail(
    task: ShardTask, layout: OutputLayout, shard: ShardMessage, max_retries: int, exc: Exception
) -> dict[str, Any]:
    attempts = task.request.retries + 1
    if attempts > max_retries:
        log.error("shard %s of job %s failed after %s attempts: %r", shard.shard, shard.job_id, attempts, exc)
        layout.mark_failed(shard.shard, f"{type(exc).__name__}: {exc}", attempts=attempts)
        raise exc
    delay = min(MAX_RETRY_DELAY, RETRY_BACKOFF**attempts)
    log.warning("shard %s of job %s: attempt %s failed (%r); retrying in %.0fs", shard.shard, shard.job_id,
                attempts, exc, delay)
    raise task.retry(exc=exc, countdown=delay)


def _complete_if_last(layout: OutputLayout, manifest: Manifest) -> None:
    committed = layout.committed()
    if len(committed) < len(manifest.shards):
        return
    summary = {
        "job_id": manifest.job_id,
        "rows": sum(m["rows"] for m in committed.values()),
        "errors": sum(m["errors"] for m in committed.values()),
        "shards": len(committed),
        "completed_at": time.time(),
    }
    if layout.mark_complete(summary):
        log.info("job %s complete: %s rows", manifest.job_id, summary["rows"])


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
            task.update_state(state=PROGRESS_STATE, meta={"done": done, "total": total})

    return report
