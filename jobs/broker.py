"""The broker as every package reaches it: one client policy, one URL safe to print, one error mapping.

Connection failures of redis-py, of the socket layer and of kombu (``kombu.exceptions.
OperationalError``, recognised by its class, since ``jobs/`` never imports kombu) all become
:class:`jobs.errors.BrokerUnavailable` in :func:`broker_errors`, with the URL's password masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from jobs.errors import BrokerUnavailable

SECRET_PARAMETERS = ("password", "passwd", "secret", "token")
"""Query parameters whose value :func:`safe_url` masks (Redis takes ``?password=``)."""
TIMEOUT = 10.0
"""Seconds a long operation's broker call may take, connect or reply, before it counts as unreachable:
a write the job depends on (enqueue, a lease, forgetting attempts)."""
QUICK_TIMEOUT = 5.0
"""Seconds for a quick question (a ping, a lookup, a status read), whose caller says at once that the
broker is down or goes on without it."""


def client(url: str, timeout: float = TIMEOUT, *, health_check_interval: int = 0) -> redis.Redis:
    """A Redis client for ``url`` with the timeout policy (connect and reply); replies are bytes, as
    every caller reads them. ``health_check_interval`` pings a connection idle that long before reuse."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                health_check_interval=health_check_interval)


def text(reply: object) -> str:
    """A reply of :func:`client` (bytes) as text; a str passes as it is."""
    return reply.decode() if isinstance(reply, bytes) else str(reply)


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


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker could not be reached (not that a request was wrong)."""
    if isinstance(exc, OSError | redis.ConnectionError | redis.TimeoutError):
        return True
    return any(cls.__module__ == "kombu.exceptions" and cls.__name__ == "OperationalError"
               for cls in type(exc).__mro__)


@contextmanager
def broker_errors(url: str, doing: str = "", advice: str = "") -> Iterator[None]:
    """Raise BrokerUnavailable ("cannot reach the broker at URL[ to DOING]: why[; ADVICE]") for a
    connection failure."""
    try:
        yield
    except BrokerUnavailable:
        raise
    except Exception as exc:
        if not (is_connection_error(exc) or isinstance(exc, redis.RedisError)):
            raise
        raise BrokerUnavailable(f"cannot reach the broker at {safe_url(url)}{' to ' + doing if doing else ''}: "
                                f"{exc}{'; ' + advice if advice else ''}") from exc
