"""Job id -> output location, kept in the broker's Redis so ``status JOB`` works anywhere.

The index outlives a job's other broker state (its ledger, leases and delivery counts
expire after the retention period, see :mod:`jobs.ledger`; every key is in :mod:`jobs.protocol`): one small key per job id
and one entry in a sorted set by submit time, so that ``jobs`` lists every job ever
submitted to this broker; its numbers then come from the output location.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from jobs.errors import BrokerUnavailable, OutputError
from jobs.io.layout import OutputLayout
from jobs.io.storage import is_remote
from jobs.protocol import JOB_QUEUES_KEY, JOBS_KEY, job_index_key
from jobs.settings import Settings

SECRET_PARAMETERS = ("password", "passwd", "secret", "token")
"""Query parameters whose value :func:`safe_url` masks (Redis takes ``?password=``)."""


@dataclass(frozen=True)
class KnownJob:
    job_id: str
    output: str
    submitted_at: float


def remember(settings: Settings, job_id: str, output: str) -> None:
    try:
        pipe = redis.Redis.from_url(settings.broker_url).pipeline()
        pipe.set(job_index_key(job_id), output)
        pipe.zadd(JOBS_KEY, {job_id: time.time()})
        pipe.hset(JOB_QUEUES_KEY, job_id, settings.queue)  # where recovery (jobs.recovery) sends it again
        pipe.execute()
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot reach the broker to record job {job_id}: {exc}") from exc


def known_jobs(settings: Settings, limit: int | None = None) -> list[KnownJob]:
    """Jobs submitted to this broker, newest first (their index entries; nothing else is read)."""
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
    try:
        entries = client.zrevrange(JOBS_KEY, 0, -1 if limit is None else limit - 1, withscores=True)
        ids = [_text(job) for job, _ in entries]
        outputs = client.mget([job_index_key(job) for job in ids]) if ids else []
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot reach the broker at {safe_url(settings.broker_url)}: {exc}") from exc
    finally:
        client.close()
    return [KnownJob(job, _text(output), float(score))
            for (job, (_, score), output) in zip(ids, entries, outputs, strict=True) if output is not None]


def resolve(settings: Settings, job_or_output: str) -> str:
    """An output location, given either that location or a job id known to the broker."""
    if is_remote(job_or_output) or OutputLayout(job_or_output).has_manifest():
        return job_or_output
    try:
        found = redis.Redis.from_url(settings.broker_url, socket_timeout=5).get(job_index_key(job_or_output))
    except redis.RedisError:
        found = None
    if found is None:
        raise OutputError(
            f"{job_or_output!r} is neither an output directory with a batchformers manifest nor a job id "
            f"known to the broker at {safe_url(settings.broker_url)}"
        )
    return _text(found)


def safe_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs: in its user info and in a query
    parameter (``?password=``) alike; the host as written (IPv6 brackets kept)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(_secret(name) for name, _ in query):
        masked = [(name, "***" if _secret(name) else value) for name, value in query]
        parts = parts._replace(query=urlencode(masked, safe="*/:"))
    return urlunsplit(parts)


def _secret(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_PARAMETERS)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
