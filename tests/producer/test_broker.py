"""The producer's side of the broker: forgetting attempts, and the app that sends shard tasks."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobs import broker
from jobs.broker import QUICK_TIMEOUT, broker_errors, safe_url
from jobs.errors import BrokerUnavailable
from jobs.protocol import DELIVERIES_PREFIX, LAST_ERROR_PREFIX, TASK_NAME, celery_config
from jobs.settings import Settings
from producer.broker import forget_attempts, sending_app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def job(client: redis.Redis) -> Iterator[str]:
    name = f"broker-test-{uuid.uuid4().hex[:8]}"
    yield name
    for key in client.scan_iter(f"batchformers:*{name}*"):  # only this test's keys
        client.delete(key)


def test_reset_forgets_only_the_named_shards(client: redis.Redis, job: str) -> None:
    shards = range(2500)  # more than one DELETE's worth of keys
    pipe = client.pipeline()
    for shard in shards:
        pipe.set(f"{DELIVERIES_PREFIX}{job}:{shard}", 1).set(f"{LAST_ERROR_PREFIX}{job}:{shard}", "x")
    pipe.set(f"{DELIVERIES_PREFIX}{job}-other:0", 1)
    pipe.execute()
    forget_attempts(client, job, [s for s in shards if s != 7])
    assert client.get(f"{DELIVERIES_PREFIX}{job}:7") == b"1"
    assert client.get(f"{LAST_ERROR_PREFIX}{job}:7") == b"x"
    assert sum(1 for _ in client.scan_iter(f"batchformers:*:{job}:*", count=1000)) == 2
    assert client.get(f"{DELIVERIES_PREFIX}{job}-other:0") == b"1"
    client.delete(f"{DELIVERIES_PREFIX}{job}-other:0")
    forget_attempts(client, job, [])  # nothing to forget


def test_the_sending_app_publishes_json_to_the_settings_queue(redis_url: str) -> None:
    queue = f"broker-test-{uuid.uuid4().hex[:8]}"
    settings = Settings(broker_url=redis_url, queue=queue)
    app = sending_app(settings)
    assert {k: app.conf[k] for k in celery_config(settings)} == celery_config(settings)
    client = redis.Redis.from_url(redis_url)
    try:
        app.send_task(TASK_NAME, args=[{"job_id": "j", "shard": 1}], queue=queue)
        [raw] = client.lrange(queue, 0, -1)
        assert b'"content-type": "application/json"' in raw and TASK_NAME.encode() in raw
    finally:
        client.delete(queue)


def test_the_sending_app_sends_by_name_without_the_workers_code() -> None:
    """In a fresh interpreter: in this one another test may have imported worker/, whose shared task
    every Celery app then registers when it finalizes."""
    code = ("import sys; from jobs.protocol import TASK_NAME; from jobs.settings import Settings; "
            "from producer.broker import sending_app; app = sending_app(Settings()); "
            "print(TASK_NAME in app.tasks, sorted(m for m in sys.modules if m.split('.')[0] == 'worker'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "[]"]


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://user:s3cret@[::1]:6379/0", "redis://user:***@[::1]:6379/0"),
    ("redis://[::1]:6379/0?password=s3cret&socket_timeout=5", "redis://[::1]:6379/0?password=***&socket_timeout=5"),
    ("rediss://h:6379/0?ssl_ca_certs=/etc/ca.pem", "rediss://h:6379/0?ssl_ca_certs=/etc/ca.pem"),
    ("redis://localhost:6379/0", "redis://localhost:6379/0"),
])
def test_safe_url_hides_every_password_and_keeps_the_host(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_a_connection_failure_becomes_broker_unavailable_with_the_url_masked() -> None:
    url = "redis://:s3cret@127.0.0.1:1/0"  # nothing listens on port 1
    connection = broker.client(url, QUICK_TIMEOUT)
    with pytest.raises(BrokerUnavailable) as raised, broker_errors(url, "record job j", advice="start Redis"):
        connection.ping()
    message = str(raised.value)
    assert "s3cret" not in message and "127.0.0.1:1" in message
    assert "record job j" in message and message.endswith("start Redis")
    with pytest.raises(ValueError), broker_errors(url):  # not the broker's fault: passes through
        raise ValueError("a bad request")


def test_the_client_applies_the_timeout_to_connect_and_reply() -> None:
    connection = broker.client("redis://127.0.0.1:6379/0", QUICK_TIMEOUT, health_check_interval=30)
    options = connection.connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (QUICK_TIMEOUT, QUICK_TIMEOUT)
    assert options["health_check_interval"] == 30
