"""The backlog in Flower: a real `batchformers flower`, a real headless Chromium, real Redis and a real worker.

One Flower process serves the module. With a job's shards queued (no worker yet) its Broker page lists
the job's queue with the messages of all its priority lists, and Flower's /metrics has the same counts
as the broker's lists, `jobs` and `status`; once a worker has run the job, its queue is gone from both,
and the task list shows each task's job and shard.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.protocol import running_key
from jobs.routing import job_queue, queue_keys
from jobs.settings import Settings
from jobs.spec import load_spec
from producer.cli import main
from producer.embedded import LocalWorkers
from producer.status import job_status
from producer.submit import submit
from producer.watch import wait
from tests.browser import browse, needs_chromium
from tests.conftest import _kill
from tests.ports import flower_on_a_free_port

pytestmark = pytest.mark.slow  # a Flower process, a browser and a worker

METRIC = re.compile(r'^(batchformers_\w+)\{([^}]*)\} (\S+)$', re.MULTILINE)


@pytest.fixture(scope="module")
def backlog_settings(redis_url: str) -> Settings:
    return Settings(broker_url=redis_url, queue=f"bf-test-backlog-{uuid.uuid4().hex[:8]}", lease_seconds=10)


@pytest.fixture(scope="module")
def flower_url(backlog_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`batchformers flower` on a free port, without a login (loopback only), for the module's queue."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("BATCHFORMERS_", "FLOWER_"))},
           "BATCHFORMERS_BROKER_URL": backlog_settings.broker_url, "BATCHFORMERS_QUEUE": backlog_settings.queue,
           "FLOWER_UNAUTHENTICATED_API": "true"}
    with flower_on_a_free_port(env, tmp_path_factory.mktemp("flower") / "flower.log") as (port, _):
        yield f"http://127.0.0.1:{port}"


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def broker_page(flower_url: str) -> dict[str, int]:
    """Queue -> messages, from the rows of the Broker page's queue table."""
    rows = re.findall(r"<tr id=\"[^\"]*\">\s*<td>([^<]*)</td>\s*<td[^>]*>([^<]*)</td>", browse(f"{flower_url}/broker"))
    return {html.unescape(name): int(count.replace(",", "")) for name, count in rows}


def metrics(flower_url: str) -> dict[tuple[str, str], float]:
    """(metric, labels) -> value of the batchformers_ gauges on Flower's /metrics."""
    with urllib.request.urlopen(f"{flower_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(name, labels): float(value) for name, labels, value in METRIC.findall(text)}


def lengths(settings: Settings, queue: str) -> list[int]:
    client = redis.Redis.from_url(settings.broker_url)
    try:
        return [int(client.llen(key)) for key in queue_keys(queue)]
    finally:
        client.close()


def cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@needs_chromium
def test_backlog_in_flower(flower_url: str, backlog_settings: Settings, tmp_path: Path, news_parquet: Path,
                           ner_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = backlog_settings
    spec = load_spec({"task": "ner", "model": str(ner_model), "input": str(news_parquet), "priority": 7,
                      "columns": {"text": "body", "id": "doc_id"}, "output": str(tmp_path / "out"),
                      "shard_rows": 33, "batch_size": 4})
    submission = submit(spec, settings)
    queue = job_queue(settings.queue, submission.job_id)
    job = submission.job_id

    # Queued, no worker: the Broker page has the job's queue with every shard, as the broker's lists do.
    waiting = lengths(settings, queue)
    assert sum(waiting) == 2 and waiting[9 - 7] == 2  # both in the priority-7 list, not the plain one
    listed = broker_page(flower_url)
    assert listed[queue] == 2 and listed[settings.queue] == 0
    gauges = metrics(flower_url)
    assert gauges[("batchformers_queue_messages", f'job="{job}",priority="7"')] == 2
    assert gauges[("batchformers_jobs_pending_shards", f'job="{job}"')] == 2
    # The three views agree: Flower's metrics, `jobs` and `status`.
    broker = ["--broker", settings.broker_url]
    status = cli_json(["status", submission.output, "--json", *broker], capsys)
    line = next(line for line in cli_json(["jobs", "--json", *broker], capsys) if line["job_id"] == job)
    assert status["pending"] == line["pending"] == 2 == job_status(submission.output, settings).pending

    # A worker busy on a shard (slowed to 8 s, so that a headless browser's look fits in it, under load too): the page and the metrics are the broker's lists, sampled while
    # they stand still; then the job ends, its queue leaves both, and each task shows its job and shard.
    workers = LocalWorkers(settings.broker_url, count=1, queue=settings.queue, log_dir=str(tmp_path / "logs"),
                           extra_env={"BATCHFORMERS_LEASE_SECONDS": "10", "BATCHFORMERS_TORCH_THREADS": "1",
                                      "BATCHFORMERS_TEST_FAULTS": "sleep=8"}).start()
    try:
        client = redis.Redis.from_url(settings.broker_url)
        _until(lambda: client.scard(running_key(job)), 60, "a worker busy on a shard")

        def agrees() -> bool:
            before = lengths(settings, queue), client.smembers(running_key(job))
            page, gauges = broker_page(flower_url).get(queue), metrics(flower_url)
            if (lengths(settings, queue), client.smembers(running_key(job))) != before or not before[1]:
                return False  # a shard started or ended meanwhile: sample again
            pending = job_status(submission.output, settings).pending
            assert page == sum(before[0]) == gauges[("batchformers_queue_messages", f'job="{job}",priority="7"')]
            assert gauges[("batchformers_jobs_pending_shards", f'job="{job}"')] == pending == sum(before[0])
            return True

        _until(agrees, 30, "a still moment of the run")
        client.close()
        assert wait(submission.output, timeout=120).state == "complete"
        assert sum(lengths(settings, queue)) == 0
        assert queue not in broker_page(flower_url)
        assert not [key for key in metrics(flower_url) if f'job="{job}"' in key[1]]
        def api_tasks() -> list[str]:  # Flower has the workers' events (the page then only renders them)
            with urllib.request.urlopen(f"{flower_url}/api/tasks", timeout=10) as response:
                args = [task.get("args") or "" for task in json.loads(response.read()).values()]
            return [arg for arg in args if arg.startswith(f"job={job} ")]

        assert len(_until(lambda: len(api_tasks()) == 2 and api_tasks(), 60, "the job's tasks in Flower")) == 2

        def listed_tasks() -> str:
            page = browse(f"{flower_url}/tasks")
            return page if page.count(f"job={job} ") == 2 else ""

        tasks = _until(listed_tasks, 30, "the job's two tasks in Flower's task list")
        assert all(f"job={job} shard={shard} rows=33" in tasks for shard in range(2))
    finally:
        _kill(workers)
