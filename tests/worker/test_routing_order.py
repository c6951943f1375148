"""The worker's queue order and its route watcher, in-process: no worker process, a real Redis.

The watcher runs as the step the real Celery blueprint builds, in a real (unstarted) worker's
consumer with its kombu timer, on a real connection, so subscribing and cancelling go through
Celery and kombu as in a worker. The queue cycle is tested on its own, with routes as the
watcher leaves them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from jobs.ledger import job_keys
from jobs.protocol import SERVING_PREFIX
from jobs.routing import Route, job_queue, queue_keys, read_routes, register, routes_key, version_key
from jobs.settings import Settings
from worker import routing as worker_routing
from worker.app import make_app
from worker.routing import CLEANUP_EVERY, AffinityCycle, RouteWatcher, RoutingState

HOSTNAME = "w1@routing-test"


@pytest.fixture
def fresh_state() -> Iterator[RoutingState]:
    saved = worker_routing.state
    worker_routing.state = RoutingState()
    yield worker_routing.state
    worker_routing.state = saved


@pytest.fixture(autouse=True)
def _own_keys(client: redis.Redis, queue_name: str) -> Iterator[None]:
    yield
    for key in client.scan_iter(f"*{queue_name}*"):  # routes, version, serving, job queues and ledgers
        client.delete(key)


def _route(base: str, name: str, model: str) -> Route:
    job_id = f"{base}-{name}"  # so that the job's ledger is one of this test's keys
    return Route(queue=job_queue(base, job_id), job_id=job_id, priority=5, model=model, model_key=f"key-{model}")


@dataclass
class Worker:
    consumer: Any
    watcher: RouteWatcher

    def consuming(self) -> list[str]:
        return [queue.name for queue in self.consumer.task_consumer.queues]


@pytest.fixture
def make_worker(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                fresh_state: RoutingState) -> Iterator[Callable[..., Worker]]:
    """A worker's consumer, built by Celery from the worker app and connected, with its RouteWatcher step."""
    built: list[Worker] = []

    def build(models: str = "", concurrency: int = 3, model_slots: int = 2, broker_url: str = "") -> Worker:
        url = broker_url or settings.broker_url
        env = {"BROKER_URL": url, "QUEUE": settings.queue, "MODELS": models, "MODEL_SLOTS": str(model_slots)}
        for name, value in env.items():
            monkeypatch.setenv(f"BATCHFORMERS_{name}", value)
        app = make_app(Settings(broker_url=url, queue=settings.queue))
        controller = app.WorkController(hostname=HOSTNAME, concurrency=concurrency, pool_cls="prefork",
                                        queues=[settings.queue])
        consumer = controller.consumer
        watcher = next(step for step in consumer.blueprint.steps.values() if isinstance(step, RouteWatcher))
        consumer.task_consumer = None
        if not broker_url:
            consumer.connection = consumer.connection_for_read()
            consumer.task_consumer = app.amqp.TaskConsumer(
                consumer.connection, queues=list(app.amqp.queues.consume_from.values()), accept=["json"])
        built.append(Worker(consumer, watcher))
        return built[-1]

    yield build
    for worker in built:
        worker.watcher.stop(worker.consumer)
        if worker.consumer.task_consumer is not None:
            worker.consumer.task_consumer.close()
            worker.consumer.connection.close()


def _due(consumer: Any) -> int:
    """Run the consumer timer's entries that are due, as the worker's event loop does; how many ran."""
    ran = 0
    for _, entry in consumer.timer:
        if entry is None:
            return ran
        entry()
        ran += 1
    return ran


def _poll(worker: Worker, client: redis.Redis, base: str) -> None:
    """One poll that reads the routes: as after an announcement."""
    client.incr(version_key(base))
    worker.watcher.refresh(worker.consumer)


def test_the_worker_state_starts_empty() -> None:
    assert isinstance(worker_routing.state, RoutingState)
    state = RoutingState()
    assert (state.capacity, state.routes, list(state.recent), state.crowd) == (1, {}, [], {})


def test_took_keeps_the_most_recent_models_up_to_the_capacity() -> None:
    state = RoutingState(capacity=2)
    state.routes = {route.queue: route for route in (
        _route("b", "a1", "a"), _route("b", "b1", "b"), _route("b", "c1", "c"), _route("b", "a2", "a"))}
    queue = {route.job_id: route.queue for route in state.routes.values()}
    state.took(queue["b-a1"])
    state.took(queue["b-b1"])
    state.took(queue["b-a1"])  # used again: now the most recent
    assert list(state.recent) == ["key-b", "key-a"]
    state.took(queue["b-c1"])  # evicts the least recently used, b
    assert list(state.recent) == ["key-a", "key-c"]
    state.took(queue["b-a2"])  # another job on a loaded model
    assert list(state.recent) == ["key-c", "key-a"]
    state.took("b.unknown")  # no route: nothing known about its model
    assert list(state.recent) == ["key-c", "key-a"]
    one = RoutingState()
    one.routes = state.routes
    one.took(queue["b-a1"])
    one.took(queue["b-b1"])
    assert list(one.recent) == ["key-b"]


def test_rank_puts_loaded_models_first_then_the_least_crowded() -> None:
    state = RoutingState(capacity=1)
    state.routes = {route.queue: route for route in (_route("b", "a", "a"), _route("b", "b", "b"),
                                                     _route("b", "c", "c"))}
    state.took("b.b-a")
    state.crowd = {"key-a": 3, "key-b": 2}
    assert state.rank("b.b-a") == (0, 0)  # loaded here: others having it too does not matter
    assert state.rank("b.b-b") == (1, 2)
    assert state.rank("b.b-c") == (1, 0)
    assert state.rank("b") == (1, 0)  # the base queue has no route


def test_consume_orders_loaded_then_least_crowded_and_rotate_round_robins(fresh_state: RoutingState) -> None:
    routes = [_route("b", "a1", "a"), _route("b", "bb", "b"), _route("b", "a2", "a"), _route("b", "cc", "c")]
    fresh_state.routes = {route.queue: route for route in routes}
    fresh_state.crowd = {"key-b": 2, "key-c": 1}
    a1, bb, a2, cc = (route.queue for route in routes)
    cycle = AffinityCycle(["b", a1, bb, a2, cc])
    assert cycle.consume(5) == ["b", a1, a2, cc, bb]  # nothing loaded yet: fewest other workers first, ties in order
    assert cycle.rotate(a2) == a2  # served a shard of a2: model a is loaded now, a2 goes to the back
    assert cycle.items == ["b", a1, bb, cc, a2]
    assert list(fresh_state.recent) == ["key-a"]
    assert cycle.consume(5) == [a1, a2, "b", cc, bb]
    assert cycle.consume(2) == [a1, a2]
    cycle.rotate(a1)
    assert cycle.consume(2) == [a2, a1]  # the two jobs on the loaded model take turns
    assert cycle.rotate("b.gone") == "b.gone"  # a queue no longer consumed: the order stays
    assert cycle.items == ["b", bb, cc, a2, a1]


def test_update_keeps_the_order_of_kept_queues_and_inserts_new_ones_anywhere() -> None:
    assert AffinityCycle().items == [] and AffinityCycle(None).consume(3) == []
    cycle = AffinityCycle(["q1", "q2", "q3"])
    cycle.update(["q3", "q1"])
    assert cycle.items == ["q1", "q3"]
    cycle.update(["q1", "q3"])
    assert cycle.items == ["q1", "q3"]
    positions = set()
    for _ in range(200):
        cycle = AffinityCycle(["q1", "q2"])
        cycle.update(["q2", "new", "q1"])
        assert [queue for queue in cycle.items if queue != "new"] == ["q1", "q2"]
        positions.add(cycle.items.index("new"))
    assert positions == {0, 1, 2}  # at random: new queues do not always go first, or last
    empty = AffinityCycle()
    empty.update(["x"])
    assert empty.items == ["x"]


def test_start_subscribes_to_the_served_job_queues(
    make_worker: Callable[..., Worker], client: redis.Redis, settings: Settings, fresh_state: RoutingState
) -> None:
    base = settings.queue
    routes = [_route(base, "j1", "model-a"), _route(base, "j2", "model-b"), _route(base, "j3", "model-a")]
    for route in routes:
        register(client, base, route)
    worker = make_worker(models="model-a, model-c", concurrency=3, model_slots=2)
    started = time.time()
    worker.watcher.start(worker.consumer)
    assert worker.consuming() == [base, routes[0].queue, routes[2].queue]
    assert fresh_state.routes == {route.queue: route for route in routes}  # every route: the order needs them
    assert fresh_state.capacity == 6  # two models per process, three processes
    assert worker.watcher.polls == 1
    assert worker.watcher.client is not None
    kwargs = worker.watcher.client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5, 5)  # a hung broker never blocks long
    serving = client.hgetall(f"{SERVING_PREFIX}{base}")
    assert list(serving) == [f"{HOSTNAME}/{os.getpid()}".encode()]
    entry = json.loads(next(iter(serving.values())))
    assert entry["models"] == [] and started <= entry["at"] <= time.time()
    # The timer polls again within FAST_POLL_SECONDS: a new job is subscribed without any other call.
    later = _route(base, "j4", "model-c")
    register(client, base, later)
    time.sleep(0.25)
    assert _due(worker.consumer) >= 1
    assert worker.consuming() == [base, routes[0].queue, routes[2].queue, later.queue]


@pytest.mark.parametrize(("concurrency", "model_slots", "capacity"), [(1, 1, 1), (1, 3, 3), (2, 1, 2)])
def test_the_models_kept_are_the_slots_times_the_processes(
    make_worker: Callable[..., Worker], fresh_state: RoutingState, concurrency: int, model_slots: int, capacity: int
) -> None:
    worker = make_worker(concurrency=concurrency, model_slots=model_slots)
    worker.watcher.start(worker.consumer)
    assert fresh_state.capacity == capacity


@pytest.mark.parametrize("pool", ["none", "unsized"])
def test_a_pool_that_does_not_tell_its_size_counts_as_one_process(
    make_worker: Callable[..., Worker], fresh_state: RoutingState, pool: str
) -> None:
    worker = make_worker(concurrency=4, model_slots=3)
    if pool == "none":
        worker.consumer.pool = None  # a consumer run without a worker's pool
    else:
        worker.consumer.pool.limit = None
    worker.watcher.start(worker.consumer)
    assert fresh_state.capacity == 3  # the slots of one process: neither more models kept nor a failed start


def test_a_worker_without_models_serves_every_job(
    make_worker: Callable[..., Worker], client: redis.Redis, settings: Settings
) -> None:
    base = settings.queue
    routes = [_route(base, "j2", "model-b"), _route(base, "j1", "model-a")]
    for route in routes:
        register(client, base, route)
    worker = make_worker()
    worker.watcher.start(worker.consumer)
    assert worker.consuming() == [base, routes[1].queue, routes[0].queue]  # subscribed in sorted order


def test_stop_cancels_the_poll_and_withdraws_the_worker(
    make_worker: Callable[..., Worker], client: redis.Redis, settings: Settings
) -> None:
    base = settings.queue
    worker = make_worker()
    worker.watcher.stop(worker.consumer)  # stopped before it started: nothing to do
    worker.watcher.refresh(worker.consumer)  # nor to poll
    assert client.hlen(f"{SERVING_PREFIX}{base}") == 0
    worker.watcher.start(worker.consumer)
    timer = worker.watcher.timer
    assert client.hlen(f"{SERVING_PREFIX}{base}") == 1
    worker.watcher.stop(worker.consumer)
    assert timer.canceled and worker.watcher.timer is None and worker.watcher.client is None
    assert client.hlen(f"{SERVING_PREFIX}{base}") == 0
    register(client, base, _route(base, "j1", "model-a"))
    worker.watcher.refresh(worker.consumer)
    time.sleep(0.25)
    assert _due(worker.consumer) == 0
    assert worker.consuming() == [base]
    worker.watcher.stop(worker.consumer)  # twice: still nothing to do


def test_a_restarted_consumer_subscribes_again_at_once(
    make_worker: Callable[..., Worker], client: redis.Redis, settings: Settings
) -> None:
    base = settings.queue
    route = _route(base, "j1", "model-a")
    register(client, base, route)
    worker = make_worker()
    worker.watcher.start(worker.consumer)
    assert worker.consuming() == [base, route.queue]
    worker.watcher.stop(worker.consumer)
    worker.consumer.cancel_task_queue(route.queue)  # a reconnect rebuilds the consumer on the base queue alone
    worker.watcher.start(worker.consumer)  # within a second, no new announcement: read all the same
    assert worker.consuming() == [base, route.queue]


def test_a_broker_that_refuses_connections_is_polled_again_without_raising(
    make_worker: Callable[..., Worker], fresh_state: RoutingState, refused_port: int
) -> None:
    worker = make_worker(broker_url=f"redis://127.0.0.1:{refused_port}/0")
    worker.watcher.start(worker.consumer)  # the first poll fails: no routes, no error
    assert worker.watcher.client is not None and worker.watcher.timer is not None
    assert fresh_state.routes == {} and worker.watcher.polls == 0
    worker.watcher.refresh(worker.consumer)
    worker.watcher.stop(worker.consumer)  # cannot withdraw its entry either: it goes stale on its own
    assert worker.watcher.client is None


def test_routes_are_read_on_an_announcement_or_after_a_second(
    make_worker: Callable[..., Worker], client: redis.Redis, settings: Settings
) -> None:
    base = settings.queue
    worker = make_worker()
    worker.watcher.start(worker.consumer)
    quiet = _route(base, "quiet", "model-a")
    client.hset(routes_key(base), quiet.queue, quiet.to_json())  # written without an announcement
    worker.watcher.refresh(worker.consumer)
    assert worker.consuming() == [base] and worker.watcher.polls == 1
    time.sleep(1.05)
    worker.watcher.refresh(worker.consumer)  # a full read every POLL_SECONDS all the same
    assert worker.consuming() == [base, quiet.queue] and worker.watcher.polls == 2
    announced = _route(base, "loud", "model-a")
    register(client, base, announced)
    worker.watcher.refresh(worker.consumer)  # an announcement is read at once
    assert worker.consuming() == [base, quiet.queue, announced.queue]
    assert worker.watcher.polls == 3


def _finish(client: redis.Redis, route: Route) -> None:
    client.hset(job_keys(route.job_id)[0], "finished_at", "3000.0")


def test_finished_jobs_routes_are_dropped_every_tenth_poll(
    make_worker: Callable[..., Worker], client: redis.Redis, settings: Settings, fresh_state: RoutingState
) -> None:
    base = settings.queue
    done, waiting, open_, later = (_route(base, name, "model-a") for name in ("done", "waiting", "open", "later"))
    for route in (done, waiting, open_, later):
        register(client, base, route)
    _finish(client, done)
    _finish(client, waiting)
    client.rpush(queue_keys(waiting.queue)[3], "a shard at another priority")  # complete, yet a message waits
    worker = make_worker()
    worker.watcher.start(worker.consumer)  # the first poll looks for finished jobs
    assert set(read_routes(client, base)) == {waiting.queue, open_.queue, later.queue}  # dropped for every worker
    assert worker.consuming() == [base, later.queue, open_.queue, waiting.queue]
    assert set(fresh_state.routes) == {waiting.queue, open_.queue, later.queue}
    _finish(client, later)
    for _ in range(CLEANUP_EVERY - 1):  # polls 2 to 10 do not look
        _poll(worker, client, base)
    assert set(read_routes(client, base)) == {waiting.queue, open_.queue, later.queue}
    assert worker.consuming() == [base, later.queue, open_.queue, waiting.queue]
    _poll(worker, client, base)  # the eleventh does
    assert worker.watcher.polls == CLEANUP_EVERY + 1
    assert set(read_routes(client, base)) == {waiting.queue, open_.queue}
    assert worker.consuming() == [base, open_.queue, waiting.queue]


def test_models_are_shared_and_the_others_counted(
    make_worker: Callable[..., Worker], client: redis.Redis, settings: Settings, fresh_state: RoutingState
) -> None:
    base = settings.queue
    key = f"{SERVING_PREFIX}{base}"
    route = _route(base, "j1", "a")
    register(client, base, route)
    worker = make_worker()
    worker.watcher.start(worker.consumer)  # its own entry comes first in the hash
    fresh_state.took(route.queue)
    now = time.time()
    others = {"garbage/1": "not json", "stale/2": {"models": ["key-b"], "at": now - 11},
              "no-time/3": {"models": ["key-c"]}, "other/4": {"models": ["key-a", "key-b"], "at": now},
              "other/5": {"models": ["key-a"], "at": now - 8}, "no-models/6": {"at": now}}
    for name, entry in others.items():
        client.hset(key, name, entry if isinstance(entry, str) else json.dumps(entry))
    started = time.time()
    _poll(worker, client, base)
    assert fresh_state.crowd == {"key-a": 2, "key-b": 1}  # not itself, not the stale ones
    serving = client.hgetall(key)
    own = f"{HOSTNAME}/{os.getpid()}".encode()
    assert set(serving) == {own, b"garbage/1", b"other/4", b"other/5", b"no-models/6"}  # stale entries removed
    entry = json.loads(serving[own])
    assert entry["models"] == ["key-a"] and started <= entry["at"] <= time.time()


def test_workers_claiming_at_once_get_the_least_held_models(client: redis.Redis, settings: Settings) -> None:
    key, now = f"{SERVING_PREFIX}{settings.queue}", time.time()
    claim = worker_routing._CLAIM
    client.hset(key, "busy", json.dumps({"models": ["key-a"], "at": now}))
    client.hset(key, "gone", json.dumps({"models": ["key-b"], "at": now - 60}))  # stale: not counted
    client.hset(key, "garbled", "{not json")
    assert client.eval(claim, 1, key, "w1", now, 10, "key-a", "key-b") == b"key-b"
    assert client.eval(claim, 1, key, "w2", now, 10, "key-a", "key-b") == b"key-a", "a tie: the first in order"
    assert client.eval(claim, 1, key, "w3", now, 10, "key-a", "key-b") == b"key-b"
    entry = json.loads(client.hget(key, "w3"))
    assert entry["models"] == ["key-b"] and abs(entry["at"] - now) < 0.01
    assert client.eval(claim, 1, key, "w1", now, 10, "key-a", "key-b") == b"key-b", "its own claim is not counted"


def test_a_fresh_worker_claims_a_waiting_model_before_its_first_shard(
    make_worker: Callable[..., Worker], client: redis.Redis, settings: Settings, fresh_state: RoutingState
) -> None:
    base = settings.queue
    idle, waiting, urgent_empty = (_route(base, "j1", "model-a"), _route(base, "j2", "model-b"),
                                   Route(queue=job_queue(base, f"{base}-j3"), job_id=f"{base}-j3", priority=9,
                                         model="model-c", model_key="key-model-c"))
    for route in (idle, waiting, urgent_empty):
        register(client, base, route)
    client.lpush(queue_keys(waiting.queue)[0], "message")  # only j2 has a shard waiting
    worker = make_worker(concurrency=1, model_slots=1)
    worker.watcher.start(worker.consumer)
    assert fresh_state.claim == waiting.model_key, "the waiting job's model, not the idle or empty ones'"
    assert fresh_state.rank(waiting.queue) == (0, 0) < fresh_state.rank(idle.queue)
    entry = json.loads(client.hget(f"{SERVING_PREFIX}{base}", f"{HOSTNAME}/{os.getpid()}"))
    assert entry["models"] == [waiting.model_key], "the claim is published for the others' counts"
    fresh_state.took(idle.queue)
    assert fresh_state.claim is None and fresh_state.rank(idle.queue) == (0, 0)
