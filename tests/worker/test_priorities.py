"""Priorities and queue order on a real Redis, through the real kombu transport, no worker needed.

What is published with :func:`jobs.dispatch.enqueue` is consumed here the way a worker's
consumer does (BRPOP over every job queue, prefetch 1, the worker's queue cycle), so these
pin the order a worker that frees up takes shards in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis

from jobs import routing
from jobs.dispatch import enqueue
from jobs.errors import SpecError
from jobs.protocol import DEFAULT_PRIORITY, ShardMessage
from jobs.settings import Settings
from jobs.spec import load_spec
from producer.broker import sending_app
from tests.models import tiny_model_path
from worker import routing as worker_routing
from worker.app import make_app


@pytest.fixture
def fresh_routing_state() -> Iterator[worker_routing.RoutingState]:
    saved = worker_routing.state
    worker_routing.state = worker_routing.RoutingState(capacity=1)
    yield worker_routing.state
    worker_routing.state = saved


def _enqueue_job(settings: Settings, tmp_path: Path, name: str, shards: int, model: str = "bert-ner",
                 **fields: Any) -> str:
    spec = load_spec({"task": "tokenize", "model": str(tiny_model_path(model)), "input": str(tmp_path / "in.parquet"),
                      "output": str(tmp_path / name), **fields})
    messages = [ShardMessage(job_id=name, shard=i, output=str(tmp_path / name), source="unused", start=i,
                             stop=i + 1) for i in range(shards)]
    enqueue(messages, settings, sending_app(settings), spec=spec)
    return routing.job_queue(settings.queue, name)


def _served(settings: Settings, queues: list[str], count: int) -> list[str]:
    """Job ids in the order a prefetch-1 consumer of ``queues`` receives them (each acked before the next)."""
    got: list[str] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body[0][0]["job_id"])
        message.ack()

    with make_app(settings).connection_for_read() as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        declared = [kombu.Queue(q, exchange=kombu.Exchange(q), routing_key=q) for q in queues]
        with kombu.Consumer(channel, queues=declared, callbacks=[on_message], accept=["json"]):
            while len(got) < count:
                connection.drain_events(timeout=10)
    return got


def test_priority_is_validated_with_a_clear_error(tmp_path: Path) -> None:
    base = {"task": "tokenize", "model": str(tiny_model_path("bert-ner")), "input": str(tmp_path / "in.parquet"),
            "output": str(tmp_path / "out")}
    assert load_spec(base).priority == DEFAULT_PRIORITY
    for bad in (10, -1):
        with pytest.raises(SpecError, match=r"priority: priority must be 0-9 \(higher runs first; default 5\)"):
            load_spec({**base, "priority": bad})
    with pytest.raises(SpecError, match="^priority: "):
        load_spec({**base, "priority": "urgent"})
    # Not part of what the job computes: a resubmit at another priority resumes the same job.
    assert load_spec({**base, "priority": 9}).fingerprint() == load_spec(base).fingerprint()


def test_higher_priority_jobs_are_served_first_across_queues(
    settings: Settings, tmp_path: Path, fresh_routing_state: worker_routing.RoutingState
) -> None:
    low = _enqueue_job(settings, tmp_path, "low", 3, priority=2)
    middle = _enqueue_job(settings, tmp_path, "middle", 3)
    high = _enqueue_job(settings, tmp_path, "high", 3, priority=9)
    routes = routing.read_routes(redis.Redis.from_url(settings.broker_url), settings.queue)
    assert {route.job_id: route.priority for route in routes.values()} == {"low": 2, "middle": 5, "high": 9}
    fresh_routing_state.routes = routes
    served = _served(settings, [low, middle, high], 9)
    assert served == ["high"] * 3 + ["middle"] * 3 + ["low"] * 3


def test_equal_priority_jobs_interleave_and_a_loaded_model_goes_first(
    settings: Settings, tmp_path: Path, fresh_routing_state: worker_routing.RoutingState
) -> None:
    first = _enqueue_job(settings, tmp_path, "first", 3)
    second = _enqueue_job(settings, tmp_path, "second", 3)  # same model: one loaded model serves both
    other = _enqueue_job(settings, tmp_path, "other", 3, model="bert-classifier")
    routes = routing.read_routes(redis.Redis.from_url(settings.broker_url), settings.queue)
    fresh_routing_state.routes = routes
    fresh_routing_state.took(first)  # this worker last ran a shard of `first`: its model is loaded
    served = _served(settings, [other, first, second], 9)
    assert sorted(served[:6]) == ["first"] * 3 + ["second"] * 3  # the loaded model's jobs, before `other`
    assert all(a != b for a, b in zip(served[:6], served[1:6], strict=False))  # round-robin: no job waits
    assert served[6:] == ["other"] * 3  # switched model only when nothing of the loaded one waited
