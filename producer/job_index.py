"""Job id -> output location, kept in the broker's Redis so ``status JOB`` works anywhere."""

from __future__ import annotations

import redis

from jobs.errors import BrokerUnavailable, OutputError
from jobs.layout import OutputLayout
from jobs.settings import Settings
from jobs.storage import is_remote

KEY_PREFIX = "batchformers:job:"


def remember(settings: Settings, job_id: str, output: str) -> None:
    try:
        redis.Redis.from_url(settings.broker_url).set(KEY_PREFIX + job_id, output)
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot reach the broker to record job {job_id}: {exc}") from exc


def resolve(settings: Settings, job_or_output: str) -> str:
    """An output location, given either that location or a job id known to the broker."""
    if is_remote(job_or_output) or OutputLayout(job_or_output).has_manifest():
        return job_or_output
    try:
        found = redis.Redis.from_url(settings.broker_url, socket_timeout=5).get(KEY_PREFIX + job_or_output)
    except redis.RedisError:
        found = None
    if found is None:
        raise OutputError(
            f"{job_or_output!r} is neither an output directory with a batchformers manifest nor a job id "
            f"known to the broker at {safe_url(settings.broker_url)}"
        )
    return found.decode() if isinstance(found, bytes) else str(found)


def safe_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
