"""What the Flower of ``batchformers flower`` adds: every live job queue on the Broker page, the backlog on /metrics.

Flower lists the queues its workers reported when it last inspected them (at its start) or, with
no worker, the default queue; the job queues announced later (:mod:`jobs.routing`) never showed.
:func:`install`, run from Flower's configuration file (:mod:`worker.flowerconfig`), gives Flower:

- a Broker page listing the base queues plus every live job queue (:mod:`jobs.backlog`), each with
  its message count summed over the priority lists, whether or not a worker runs; a finished job's
  queue goes once it is empty;
- on Flower's ``/metrics``, ``batchformers_queue_messages{job, priority}`` (messages waiting in the
  job's list for that spec priority) and ``batchformers_jobs_pending_shards{job}`` (as ``status``
  counts them), for a Prometheus-based autoscaler; Flower keeps running when workers scale to zero.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from flower import urls
from flower.views.broker import BrokerView
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from tornado.web import url

from jobs.backlog import JobBacklog, read_backlog
from jobs.broker import client
from jobs.routing import JOB_QUEUE_SEPARATOR
from jobs.settings import Settings

log = logging.getLogger(__name__)
QUEUE_MESSAGES = "batchformers_queue_messages"
PENDING_SHARDS = "batchformers_jobs_pending_shards"
SCRAPE_TIMEOUT = 2.0  # seconds: a Prometheus scrape must answer before its own timeout, broker or not
_clients: dict[str, redis.Redis] = {}


def broker(url: str) -> redis.Redis:
    if url not in _clients:
        _clients[url] = client(url, SCRAPE_TIMEOUT)
    return _clients[url]


def base_queues(reported: set[str]) -> set[str]:
    """The reported queues that are not a job queue of another reported one (a worker's stale subscriptions)."""
    return {name for name in reported
            if not any(name.startswith(other + JOB_QUEUE_SEPARATOR) for other in reported if other != name)}


def live_backlog(url: str, bases: set[str]) -> list[JobBacklog]:
    return [job for base in sorted(bases) for job in read_backlog(broker(url), base) if job.live]


class JobQueuesBrokerView(BrokerView):  # type: ignore[misc]
    """Flower's Broker page, listing the live job queues of the base queues too."""

    def get_active_queue_names(self) -> list[str]:
        reported = set(super().get_active_queue_names()) | {self.capp.conf.task_default_queue}
        bases = base_queues(reported)
        try:
            jobs = {job.route.queue for job in live_backlog(self.capp.conf.broker_url, bases)}
        except redis.RedisError as exc:
            log.warning("batchformers: cannot read the job queues: %s", exc)
            return sorted(reported)
        return sorted(bases | jobs)


class BacklogCollector:
    """The backlog gauges, read from the broker at every scrape."""

    def __init__(self, url: str, bases: set[str]) -> None:
        self.url = url
        self.bases = bases

    def describe(self) -> list[Any]:
        return []  # read at scrape time only: registering must not reach the broker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        messages = GaugeMetricFamily(QUEUE_MESSAGES,
                                     "Messages waiting in a job's queue, by spec priority (0-9, higher first).",
                                     labels=["job", "priority"])
        pending = GaugeMetricFamily(PENDING_SHARDS,
                                    "Shards of a job not committed, failed or running (as status counts them).",
                                    labels=["job"])
        try:
            backlog = live_backlog(self.url, self.bases)
        except redis.RedisError as exc:
            log.warning("batchformers: cannot read the backlog: %s", exc)
            backlog = []
        for job in backlog:
            for priority in sorted({job.route.priority, *job.waiting}):
                messages.add_metric([job.route.job_id, str(priority)], job.waiting.get(priority, 0))
            if job.pending is not None:
                pending.add_metric([job.route.job_id], job.pending)
        yield messages
        yield pending


_installed: list[BacklogCollector] = []


def install() -> None:
    """Replace Flower's Broker page and add the backlog gauges to its metrics; call before Flower starts."""
    if _installed:
        return
    for index, handler in enumerate(urls.handlers):
        if getattr(handler, "handler_class", None) is BrokerView:
            urls.handlers[index] = url(handler.regex.pattern, JobQueuesBrokerView, handler.kwargs, handler.name)
    settings = Settings()
    _installed.append(BacklogCollector(settings.broker_url, {settings.queue}))
    REGISTRY.register(_installed[0])
