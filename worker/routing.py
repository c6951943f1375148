"""Which queue a worker takes its next shard from: priority, then the model it has loaded.

Each job has its own queue (:mod:`jobs.routing`). A worker consumes the base queue plus
every job queue announced in the routes hash that it serves (``--models``):
:class:`RouteWatcher` looks at the hash's version counter every ``FAST_POLL_SECONDS`` and
reads the hash when it changed (a job was submitted, resumed or retried), else every
``POLL_SECONDS``, subscribing to new jobs and dropping finished ones. Before each BRPOP, kombu's Redis transport asks the queue cycle for the
order of the queues; the transport lists the keys priority first (all queues' top priority,
then the next), so the order below only ranks queues of *equal* priority:

1. queues whose model this worker has loaded (the last ``model_slots`` x ``concurrency``
   setups it took shards for), so it switches model only when none of them has a shard
   waiting;
2. then the others, fewest other workers on their model first, so idle workers spread
   over the jobs instead of all piling onto one. A worker with no model yet claims one
   before its first shard (:meth:`RouteWatcher.claim`: the model of the top-priority jobs
   with shards waiting that the fewest live workers have or have claimed, chosen and
   recorded in one Redis script), so workers that start together on a backlog split across
   the jobs from their first shard, one model load each, instead of all loading the first
   job's model and switching later;
3. ties round-robin: a queue just served goes to the back, so equal-priority jobs on one
   model interleave, and a second job does not wait for the whole first.

With prefetch 1 and late acks (see :mod:`worker.app`) a worker reserves its next shard only
when it has finished one, so the order is applied at the moment it frees up. Two jobs on
different models and one worker do run one after the other: that is the point (no model
load per shard); more workers spread across them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections import OrderedDict
from typing import Any

import redis
from celery import bootsteps

from jobs.broker import QUICK_TIMEOUT, client
from jobs.ledger import job_keys
from jobs.protocol import SERVING_PREFIX
from jobs.routing import Route, drop, queue_keys, read_routes, serves, version
from jobs.settings import Settings

log = logging.getLogger(__name__)
FAST_POLL_SECONDS = 0.2  # how soon a new job is seen: one GET per worker
POLL_SECONDS = 1.0  # a full read of the routes, and sharing which models this worker has
CLEANUP_EVERY = 10  # full reads between looks for finished jobs' routes
SERVING_STALE_SECONDS = 10 * POLL_SECONDS


# The candidate (ARGV[4..], in an order every worker shares) that the fewest other live workers hold or
# claimed, recorded as this worker's claim in the same step: two workers claiming at once get different ones.
_CLAIM = """
local counts = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
    if entries[i] ~= ARGV[1] then
        local ok, entry = pcall(cjson.decode, entries[i + 1])
        if ok and type(entry) == 'table' and tonumber(ARGV[2]) - (tonumber(entry['at']) or 0) <= tonumber(ARGV[3]) then
            for _, model in ipairs(entry['models'] or {}) do
                counts[model] = (counts[model] or 0) + 1
            end
        end
    end
end
local chosen, fewest = nil, nil
for i = 4, #ARGV do
    local count = counts[ARGV[i]] or 0
    if fewest == nil or count < fewest then
        chosen, fewest = ARGV[i], count
    end
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({models = {chosen}, at = tonumber(ARGV[2])}))
return chosen
"""


class RoutingState:
    """What this worker's main process knows: the routes, the models it took shards for, the others' models."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self.routes: dict[str, Route] = {}
        self.recent: OrderedDict[str, None] = OrderedDict()  # model keys, least recent first
        self.crowd: dict[str, int] = {}  # model key -> other workers that have it loaded
        self.claim: str | None = None  # the model key claimed before the first shard (see RouteWatcher.claim)

    def took(self, queue: str) -> None:
        route = self.routes.get(queue)
        if route is None:
            return
        self.claim = None  # what it holds now speaks for it
        self.recent.pop(route.model_key, None)
        self.recent[route.model_key] = None
        while len(self.recent) > self.capacity:
            self.recent.popitem(last=False)

    def rank(self, queue: str) -> tuple[int, int]:
        route = self.routes.get(queue)
        if route is not None and (route.model_key in self.recent or route.model_key == self.claim):
            return (0, 0)
        return (1, self.crowd.get(route.model_key, 0) if route else 0)


state = RoutingState()


class AffinityCycle:
    """kombu's queue cycle (``queue_order_strategy``), ordered by :data:`state` as the module says."""

    def __init__(self, it: list[str] | None = None) -> None:
        self.items: list[str] = list(it or [])

    def update(self, it: list[str]) -> None:
        """Keep the round-robin order of the queues still consumed; a new one goes in at random."""
        wanted = list(it)
        self.items = [queue for queue in self.items if queue in wanted]
        for queue in wanted:
            if queue not in self.items:
                self.items.insert(random.randint(0, len(self.items)), queue)

    def consume(self, n: int) -> list[str]:
        return sorted(self.items, key=state.rank)[:n]

    def rotate(self, last_used: str) -> str:
        state.took(last_used)
        if last_used in self.items:
            self.items.append(self.items.pop(self.items.index(last_used)))
        return last_used


class RouteWatcher(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: subscribe to the job queues this worker serves, drop finished ones."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.settings = Settings()
        self.models = self.settings.served_models()
        self.client: redis.Redis | None = None
        self.polls = 0
        self.seen_version: bytes | None = None
        self.last_read = 0.0
        self.timer: Any = None
        self.name = ""

    def start(self, consumer: Any) -> None:
        """Subscribe with routing off too (then only kombu's plain rotation orders the queues), so a
        worker left with ``BATCHFORMERS_ROUTING=false`` still serves jobs a routing producer sent."""
        self.seen_version = None
        state.capacity = self.settings.model_slots * max(1, getattr(consumer.pool, "limit", None) or 1)
        self.name = f"{consumer.hostname}/{os.getpid()}"
        self.client = client(self.settings.broker_url, QUICK_TIMEOUT)
        if self.models:
            log.info("batchformers: serving only the models %s", ", ".join(sorted(self.models)))
        self.refresh(consumer)
        self.timer = consumer.timer.call_repeatedly(FAST_POLL_SECONDS, self.refresh, (consumer,), priority=10)

    def stop(self, consumer: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.client is not None:
            with contextlib.suppress(redis.RedisError):
                self.client.hdel(self.serving_key, self.name)
            self.client.close()
            self.client = None

    @property
    def serving_key(self) -> str:
        return f"{SERVING_PREFIX}{self.settings.queue}"

    def refresh(self, consumer: Any) -> None:
        """One poll: routes in, subscriptions and the others' models updated; never raises."""
        if self.client is None:
            return
        try:
            self._refresh(consumer)
        except redis.RedisError as exc:  # the broker is restarting: the consumer reconnects, we poll again
            log.debug("cannot read the routes: %s", exc)

    def _refresh(self, consumer: Any) -> None:
        assert self.client is not None
        announced = version(self.client, self.settings.queue)
        if announced == self.seen_version and time.monotonic() - self.last_read < POLL_SECONDS:
            return
        self.seen_version, self.last_read = announced, time.monotonic()
        routes = read_routes(self.client, self.settings.queue)
        self.polls += 1
        if self.polls % CLEANUP_EVERY == 1:
            routes = {queue: route for queue, route in routes.items() if not self._finished(route)}
        wanted = {queue for queue, route in routes.items() if serves(route, self.models)}
        state.routes = routes
        consuming = {queue.name for queue in consumer.task_consumer.queues}
        for queue in sorted(wanted - consuming):
            consumer.add_task_queue(queue)
        for queue in sorted(consuming - wanted - {self.settings.queue}):
            consumer.cancel_task_queue(queue)
        if not state.recent:
            self.claim({queue: routes[queue] for queue in wanted})
        self._share_models()

    def claim(self, routes: dict[str, Route]) -> None:
        """Before its first shard: claim the model of the top-priority waiting jobs that the fewest others hold."""
        assert self.client is not None
        keys = {queue: queue_keys(queue) for queue in routes}
        pipe = self.client.pipeline(transaction=False)  # one round trip for every queue's priority lists
        for queue_lists in keys.values():
            for key in queue_lists:
                pipe.llen(key)
        lengths = iter(pipe.execute())
        waiting = [route for queue, route in routes.items() if sum(next(lengths) for _ in keys[queue])]
        if not waiting:
            state.claim = None
            return
        top = max(route.priority for route in waiting)
        candidates = sorted({route.model_key for route in waiting if route.priority == top})
        if state.claim in candidates:
            return
        chosen = self.client.eval(_CLAIM, 1, self.serving_key, self.name, time.time(), SERVING_STALE_SECONDS,
                                  *candidates)
        state.claim = chosen.decode()  # the broker client's replies are bytes (jobs.broker.client)
        log.info("batchformers: claimed model %s before the first shard (%s candidates)", state.claim,
                 len(candidates))

    def _finished(self, route: Route) -> bool:
        """A complete job with nothing waiting in its queue: its route is dropped for every worker."""
        assert self.client is not None
        if self.client.hget(job_keys(route.job_id)[0], "finished_at") is None:
            return False
        if any(self.client.llen(key) for key in queue_keys(route.queue)):
            return False
        drop(self.client, self.settings.queue, route.queue)
        log.info("batchformers: job %s is complete; no longer consuming %s", route.job_id, route.queue)
        return True

    def _share_models(self) -> None:
        """Publish the models this worker took shards for, and count the other workers' (for spreading)."""
        assert self.client is not None
        now = time.time()
        models = list(state.recent) or ([state.claim] if state.claim else [])
        self.client.hset(self.serving_key, self.name, json.dumps({"models": models, "at": now}))
        crowd: dict[str, int] = {}
        for name, raw in self.client.hgetall(self.serving_key).items():
            if name.decode() == self.name:
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if now - float(entry.get("at", 0)) > SERVING_STALE_SECONDS:  # a worker gone without saying so
                self.client.hdel(self.serving_key, name)
                continue
            for key in entry.get("models", []):
                crowd[key] = crowd.get(key, 0) + 1
        state.crowd = crowd

