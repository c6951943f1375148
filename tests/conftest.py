"""Shared fixtures: a real Redis, real Celery worker processes, tiny models, input files."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from jobs.settings import Settings
from producer.embedded import EmbeddedRedis, LocalWorkers
from tests.models import tiny_model_path

NEWS = Path(__file__).resolve().parents[1] / "jobs" / "testing" / "data" / "news_sentences.txt"
# One database per pytest-xdist process (15, 14, ...): a worker's recovery scans and the job index then see
# only the jobs of its own process's tests, never those of a test running beside it.
LOCAL_REDIS = f"redis://127.0.0.1:6379/{15 - int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:] or 0) % 8}"


SLOW_FIXTURES = {"start_workers", "shared_workers"}  # a test that starts worker processes is in the slow tier, marked or not


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that starts workers ``slow``; run the fast tier (unit tests) before the slow one."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)  # a stable sort


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """BATCHFORMERS_TEST_REDIS_URL, else the local server when it answers, else one we start."""
    configured = os.environ.get("BATCHFORMERS_TEST_REDIS_URL")
    if configured:
        yield configured
    elif _answers(LOCAL_REDIS):
        yield LOCAL_REDIS
    else:
        with EmbeddedRedis() as server:
            yield server.url


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port where connections are refused: bound (so nothing else takes it) and not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def queue_name() -> str:
    """A queue of this test's own, so tests never take each other's shards."""
    return f"bf-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the tests' Redis, closed after the test."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, queue_name: str) -> Settings:
    return Settings(broker_url=redis_url, queue=queue_name, lease_seconds=10)


@pytest.fixture
def start_workers(settings: Settings, tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Call with a count to start real worker processes on this test's queue."""
    started: list[LocalWorkers] = []

    def start(count: int = 1, **env: str) -> LocalWorkers:
        extra = {"BATCHFORMERS_LEASE_SECONDS": str(settings.lease_seconds), "BATCHFORMERS_TORCH_THREADS": "1", **env}
        workers = LocalWorkers(settings.broker_url, count=count, queue=settings.queue,
                               log_dir=str(tmp_path / f"logs-{len(started)}"), extra_env=extra).start()
        started.append(workers)
        return workers

    yield start
    for workers in started:
        _kill(workers)


@pytest.fixture(scope="session")
def shared_workers(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One default worker for the whole session, on a queue of its own: for tests that need "a worker"
    and check only their own job's outputs (each start costs seconds of imports). Tests that set a
    worker's environment, count its model loads or kill it start their own (``start_workers``)."""
    settings = Settings(broker_url=redis_url, queue=f"bf-test-shared-{uuid.uuid4().hex[:8]}", lease_seconds=10)
    env = {"BATCHFORMERS_LEASE_SECONDS": "10", "BATCHFORMERS_TORCH_THREADS": "1"}
    workers = LocalWorkers(redis_url, count=1, queue=settings.queue, log_dir=str(tmp_path_factory.mktemp("shared")),
                           extra_env=env).start()
    yield settings
    _kill(workers)


def _kill(workers: LocalWorkers) -> None:
    """The test is over: kill the workers and reap them. A warm stop spends ~1.7 s joining billiard's
    pool; tests that stop workers on purpose call stop() themselves, and every `batchformers run` ends
    with one."""
    workers.force()
    workers.stop(fast=True)  # the processes are gone: this only reaps them


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; several only fight over the shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def news_texts() -> list[str]:
    return [line for line in NEWS.read_text().splitlines() if line.strip()]


@pytest.fixture
def news_parquet(tmp_path: Path, news_texts: list[str]) -> Path:
    """The demo sentences as Parquet with a ``doc_id`` and a ``body`` column."""
    path = tmp_path / "input" / "news.parquet"
    path.parent.mkdir()
    table = pa.table({"doc_id": [f"doc-{i}" for i in range(len(news_texts))], "body": news_texts})
    pq.write_table(table, path, row_group_size=16)
    return path


@pytest.fixture(scope="session")
def ner_model() -> Path:
    return tiny_model_path("bert-ner")
