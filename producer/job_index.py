"""Job id -> output location, kept in the broker's Redis so ``status JOB`` works anywhere.

The index outlives a job's other broker state (its ledger, leases and delivery counts
expire after the retention period, see :mod:`jobs.ledger`; every key is in :mod:`jobs.protocol`): one small key per job id
(and one from its output back to it) and one entry in a sorted set by submit time, so that ``jobs`` lists every job ever
submitted to this broker; its numbers then come from the output location.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import redis

from jobs.broker import QUICK_TIMEOUT, TIMEOUT, broker_errors, client, safe_url, text
from jobs.errors import OutputError
from jobs.protocol import JOB_QUEUES_KEY, JOBS_KEY, job_index_key, output_job_key
from jobs.settings import Settings

LOCAL_MANIFEST = "_batchformers/manifest.json"  # jobs.io.layout's MANIFEST_FILE (a test checks)


@dataclass(frozen=True)
class KnownJob:
    job_id: str
    output: str
    submitted_at: float


def remember(settings: Settings, job_id: str, output: str) -> None:
    connection = client(settings.broker_url, TIMEOUT)
    try:
        with broker_errors(settings.broker_url, f"record job {job_id}"):
            pipe = connection.pipeline()
            pipe.set(job_index_key(job_id), output)
            pipe.set(output_job_key(output), job_id)  # the other way, for `status OUTPUT` (jobs.status_record)
            pipe.zadd(JOBS_KEY, {job_id: time.time()})
            pipe.hset(JOB_QUEUES_KEY, job_id, settings.queue)  # where recovery (jobs.recovery) sends it again
            pipe.execute()
    finally:
        connection.close()


def known_jobs(settings: Settings, limit: int | None = None) -> list[KnownJob]:
    """Jobs submitted to this broker, newest first (their index entries; nothing else is read)."""
    connection = client(settings.broker_url, QUICK_TIMEOUT)
    try:
        with broker_errors(settings.broker_url):
            entries = connection.zrevrange(JOBS_KEY, 0, -1 if limit is None else limit - 1, withscores=True)
            ids = [text(job) for job, _ in entries]
            outputs = connection.mget([job_index_key(job) for job in ids]) if ids else []
    finally:
        connection.close()
    return [KnownJob(job, text(output), float(score))
            for (job, (_, score), output) in zip(ids, entries, outputs, strict=True) if output is not None]


def resolve(settings: Settings, job_or_output: str) -> str:
    """An output location, given either that location or a job id known to the broker."""
    if _is_location(job_or_output):
        return job_or_output
    connection = client(settings.broker_url, QUICK_TIMEOUT)
    try:
        found = connection.get(job_index_key(job_or_output))
    except redis.RedisError:  # an unreachable broker knows no job id: say what was looked for
        found = None
    finally:
        connection.close()
    if found is None:
        raise OutputError(
            f"{job_or_output!r} is neither an output directory with a batchformers manifest nor a job id "
            f"known to the broker at {safe_url(settings.broker_url)}"
        )
    return text(found)


def _is_location(job_or_output: str) -> bool:
    """A remote location, or a local output with a manifest; a local one is looked at without fsspec, so
    that ``status JOB_ID`` imports no storage library (see :mod:`jobs.status_record`)."""
    if "://" not in job_or_output:
        return os.path.exists(os.path.join(job_or_output, LOCAL_MANIFEST))
    if not job_or_output.startswith("file://"):
        return True  # remote (jobs.io.storage.is_remote)
    from jobs.io.layout import OutputLayout

    return OutputLayout(job_or_output).has_manifest()
