"""Flower: real Flower (`batchformers flower`) + real Redis + a real worker, read back over its HTTP API."""

from __future__ import annotations

import ast
import base64
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.errors import BatchformersError
from jobs.settings import Settings
from jobs.spec import load_spec
from producer.flower import check_basic_auth, flower_command, flower_environment
from producer.submit import submit
from producer.watch import wait
from tests.ports import flower_on_a_free_port

pytestmark = pytest.mark.slow  # a Flower process and workers

USER, PASSWORD = "ops", "s3cret-pw"


class FlowerClient:
    def __init__(self, port: int, auth: str | None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.auth = auth

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.base + path)
        if self.auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(self.auth.encode()).decode())
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def flower(settings: Settings, tmp_path: Path) -> Iterator[tuple[FlowerClient, subprocess.Popen[bytes]]]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")},
           "BATCHFORMERS_BROKER_URL": settings.broker_url, "BATCHFORMERS_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    with flower_on_a_free_port(env, tmp_path / "flower.log") as (port, process):
        yield FlowerClient(port, f"{USER}:{PASSWORD}"), process


def _record_backend_states(broker_url: str, seen: list[dict[str, Any]], stop: threading.Event) -> threading.Thread:
    """Every state the workers write to the result backend (the Redis backend publishes each one)."""
    client = redis.Redis.from_url(broker_url)
    pubsub = client.pubsub()
    pubsub.psubscribe("celery-task-meta-*")
    pubsub.get_message(timeout=5)  # the subscription is live once confirmed

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                seen.append(json.loads(message["data"]))
        pubsub.close()
        client.close()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    return thread


def test_shards_in_flower(flower: tuple[FlowerClient, subprocess.Popen[bytes]], settings: Settings,
                          start_workers: Any, tmp_path: Path, news_parquet: Path, ner_model: Path) -> None:
    client, process = flower
    # A long lease (and so visibility timeout): on a loaded machine the first shard's message must not be
    # restored and run again (a harmless "already committed" run that would replace its result in Flower).
    workers = start_workers(1, BATCHFORMERS_LEASE_SECONDS="60")
    hostname_prefix = f"local0-{os.getpid()}@"
    # Flower's event receiver is live once it has heard our worker's heartbeat.
    _until(lambda: any(name.startswith(hostname_prefix) and alive
                       for name, alive in client.get("/api/workers?status=1").items()), 60, "worker in Flower")
    # Credentials went through the environment: not on Flower's command line.
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode(errors="replace")
    assert "flower" in cmdline and PASSWORD not in cmdline
    with pytest.raises(urllib.error.HTTPError) as refused:
        FlowerClient(int(client.base.rsplit(":", 1)[1]), None).get("/api/tasks")
    assert refused.value.code == 401

    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    listener = _record_backend_states(settings.broker_url, seen, stop)
    spec = load_spec({"task": "ner", "model": str(ner_model), "input": str(news_parquet),
                      "columns": {"text": "body", "id": "doc_id"}, "output": str(tmp_path / "out"),
                      "shard_rows": 22, "batch_size": 4})
    submission = submit(spec, settings)
    assert wait(submission.output, timeout=120).state == "complete"

    def finished_tasks() -> list[dict[str, Any]]:
        tasks = [t for t in client.get("/api/tasks").values() if submission.job_id in (t.get("args") or "")]
        return tasks if len(tasks) == 3 and all(t["state"] == "SUCCESS" for t in tasks) else []

    tasks = sorted(_until(finished_tasks, 30, "three finished shard tasks in Flower"), key=lambda t: t["args"])
    stop.set()
    listener.join(timeout=5)
    for shard, task in enumerate(tasks):
        assert task["name"] == "batchformers.run_shard"
        assert task["args"] == f"job={submission.job_id} shard={shard} rows=22"
        result = ast.literal_eval(task["result"])
        assert result["shard"] == shard and result["job"] == submission.job_id
        assert result["rows"] == 22 and result["errors"] == 0 and result["seconds"] > 0
        assert task["worker"].startswith(hostname_prefix) and task["runtime"] > 0
        # The result through Flower's result-backend API, as JSON.
        backend = client.get(f"/api/task/result/{task['uuid']}")
        assert backend["state"] == "SUCCESS" and backend["result"]["rows"] == 22
        # Progress reached the result backend while the shard ran: PROGRESS with done/total.
        progress = [s for s in seen if s.get("task_id") == task["uuid"] and s["status"] == "PROGRESS"]
        assert progress, f"no PROGRESS state for shard {shard}"
        assert all(p["result"]["total"] == 22 and 0 < p["result"]["done"] <= 22 for p in progress)
        assert progress[-1]["result"]["done"] == 22
    info = client.get(f"/api/task/info/{tasks[0]['uuid']}")
    assert info["state"] == "SUCCESS" and info["args"].startswith("job=")
    workers.stop()


def test_flower_command_and_auth_checks() -> None:
    settings = Settings(broker_url="redis://:pw@redis:6379/0", flower_basic_auth="a:b,c:d")
    env = flower_environment(settings)
    assert env["FLOWER_BASIC_AUTH"] == "a:b,c:d" and env["BATCHFORMERS_BROKER_URL"] == settings.broker_url
    assert flower_environment(settings, basic_auth="x:y")["FLOWER_BASIC_AUTH"] == "x:y"
    command = flower_command(5555, "0.0.0.0", ["--url_prefix=flower"])
    assert command[1:] == ["-m", "celery", "--app", "worker.app", "flower", "--port=5555", "--address=0.0.0.0",
                           "--url_prefix=flower"]
    assert "pw" not in " ".join(command)
    for bad in ("nopassword", ":pw", ""):
        with pytest.raises(BatchformersError, match="user:password"):
            check_basic_auth(bad)
