"""Where a job's shards wait and how their priority is written on the wire (no Celery here).

Every job gets its own queue, ``<BATCHFORMERS_QUEUE>.<job id>``, and a *route* in one Redis hash
per base queue: ``batchformers:routes:<base>`` maps the queue to the job, its priority and the
model it needs. Workers read that hash to subscribe to new job queues and to know which model
each queue's shards load (:mod:`worker.routing` orders their queues by it); the producer writes
it before it enqueues, at submit, resume and retry alike.

Priorities: the spec's ``priority`` is 0-9, higher first. kombu's Redis transport serves *lower*
message priorities first (it keeps one list per priority step and BRPOPs them in ascending
order across every queue a worker consumes), so the message carries ``9 - priority`` and the
transport is configured with all ten steps, so no two priorities share a list.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from jobs.protocol import MAX_PRIORITY, PRIORITY_STEPS, ROUTES_PREFIX

if TYPE_CHECKING:  # the functions take a client and a spec
    import redis

    from jobs.spec import JobSpec

# kombu's Redis transport joins names with this: queue Q's list for priority p > 0 is Q + sep + p,
# and the members of an exchange's binding set end in sep + queue (read by jobs.recovery).
KOMBU_SEPARATOR = "\x06\x16"
JOB_QUEUE_SEPARATOR = "."


def message_priority(priority: int) -> int:
    """The kombu message priority of a spec priority: the transport serves low numbers first."""
    return MAX_PRIORITY - priority


def job_queue(base: str, job_id: str) -> str:
    return f"{base}{JOB_QUEUE_SEPARATOR}{job_id}"


def queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps for ``queue``, one per priority step, first served first."""
    return [queue if step == 0 else f"{queue}{KOMBU_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def runner_key(spec: JobSpec) -> str:
    """What a worker process caches a loaded model by: the task, its parameters and the load options.

    Two jobs with the same key share one loaded model; batch sizes are not part of it.
    """
    options = spec.load_options()
    return json.dumps([spec.task, spec.params, options.__dict__], sort_keys=True, default=str)


def model_tag(key: str) -> str:
    """A short, stable name of a :func:`runner_key` (for routes, logs and metrics)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Route:
    """One job's queue and what its shards need."""

    queue: str
    job_id: str
    priority: int
    model: str  # the model as the spec names it (hub id or path): what ``worker --models`` matches
    model_key: str  # :func:`model_tag` of the runner key: equal keys share a loaded model

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Route:
        fields: dict[str, Any] = json.loads(raw)
        return cls(**{name: fields[name] for name in cls.__dataclass_fields__})


def route_for(base: str, job_id: str, spec: JobSpec) -> Route:
    return Route(queue=job_queue(base, job_id), job_id=job_id, priority=spec.priority,
                 model=spec.resolved_model(), model_key=model_tag(runner_key(spec)))


def routes_key(base: str) -> str:
    return f"{ROUTES_PREFIX}{base}"


def version_key(base: str) -> str:
    """A counter bumped at every announcement: workers poll this one cheap key, and read the routes on a change."""
    return f"{routes_key(base)}:version"


def register(client: redis.Redis, base: str, route: Route) -> None:
    """Announce ``route`` to the workers of ``base`` (again at resume or retry: it may have been dropped)."""
    pipe = client.pipeline()
    pipe.hset(routes_key(base), route.queue, route.to_json())
    pipe.incr(version_key(base))
    pipe.execute()


def version(client: redis.Redis, base: str) -> bytes | None:
    value: bytes | None = client.get(version_key(base))
    return value


def read_routes(client: redis.Redis, base: str) -> dict[str, Route]:
    """Every announced route of ``base``, by queue; an entry that does not parse is skipped."""
    routes = {}
    for raw in client.hvals(routes_key(base)):
        try:
            route = Route.from_json(raw)
        except (ValueError, KeyError, TypeError):
            continue
        routes[route.queue] = route
    return routes


def drop(client: redis.Redis, base: str, queue: str) -> None:
    client.hdel(routes_key(base), queue)


def serves(route: Route, models: frozenset[str]) -> bool:
    """True when a worker restricted to ``models`` (empty: every model) takes the route's shards."""
    return not models or route.model in models
