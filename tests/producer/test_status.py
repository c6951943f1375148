"""`batchformers status`: shard counts from the output, running shards from broker leases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import redis

from jobs.io.layout import OutputLayout
from jobs.protocol import LEASE_PREFIX
from jobs.settings import Settings
from jobs.spec import load_spec
from producer.status import job_status, status
from producer.status_render import ranges, render
from producer.submit import Submission, submit
from tests.reliability import queue_lists

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def submitted(tmp_path: Path, news_parquet: Path, ner_model: Path, settings: Settings) -> Iterator[Submission]:
    """A 7-shard job enqueued with no worker to run it; its queue is dropped afterwards."""
    spec = load_spec({"task": "tokenize", "model": str(ner_model), "input": str(news_parquet),
                      "columns": {"text": "body"}, "output": str(tmp_path / "out"), "shard_rows": 10})
    submitted = submit(spec, settings)
    yield submitted
    client = redis.Redis.from_url(settings.broker_url)
    client.delete(*queue_lists(settings.broker_url, settings.queue))
    for key in client.scan_iter(match=f"{LEASE_PREFIX}{submitted.job_id}*"):  # this job's leases only
        client.delete(key)


def _commit(layout: OutputLayout, shard: int, rows: int = 10) -> None:
    layout.commit(shard, pa.table({"x": list(range(rows))}), {"rows": rows, "errors": 1, "seconds": 0.5})


def _cli(*args: str, broker: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")},
           "BATCHFORMERS_BROKER_URL": broker, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "producer.cli", "status", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.slow  # the CLI in subprocesses
def test_counts_pending_running_committed_failed(submitted: Submission, settings: Settings) -> None:
    layout = OutputLayout(submitted.output)
    _commit(layout, 0)
    _commit(layout, 1)
    layout.mark_failed(6, "ModelLoadError: cannot load model 'nope'", attempts=3)
    client = redis.Redis.from_url(settings.broker_url)
    for shard in (2, 3, 0):  # shard 0's lease outlived its commit: not running
        client.set(f"{LEASE_PREFIX}{submitted.job_id}:{shard}", "worker-a", ex=60)
    client.set(f"{LEASE_PREFIX}{submitted.job_id}-other:4", "worker-b", ex=60)  # another job's lease

    current = job_status(submitted.output, settings)
    assert (current.shards, current.committed, current.failed) == (7, 2, 1)
    assert current.running == 2 and current.running_shards == [2, 3]
    assert current.pending == 2 and current.broker == "reachable"
    assert current.rows == 66 and current.rows_done == 20 and current.row_errors == 2
    assert current.rows_per_second and current.rows_per_second > 0
    assert current.eta_seconds is not None and current.state == "running" and current.task == "tokenize"
    assert current.failures == {6: "ModelLoadError: cannot load model 'nope'"}

    # By job id (looked up on the broker), as a script would.
    done = _cli(submitted.job_id, "--json", broker=settings.broker_url)
    assert done.returncode == 0, done.stderr
    reported = json.loads(done.stdout)
    assert reported["running"] == 2 and reported["pending"] == 2 and reported["failures"] == {"6": current.failures[6]}

    # The table a person reads.
    done = _cli(submitted.job_id, broker=settings.broker_url)
    assert done.returncode == 0, done.stderr
    for text in ("pending", "running", "committed", "failed", "rows/s", "ETA", "running shards: 2-3",
                 "failed shards", "cannot load model 'nope'", submitted.job_id):
        assert text in done.stdout, (text, done.stdout)


@pytest.mark.slow  # the CLI in subprocesses
def test_degrades_without_broker(submitted: Submission, refused_port: int) -> None:
    _commit(OutputLayout(submitted.output), 0)
    gone = f"redis://127.0.0.1:{refused_port}/0"
    current = job_status(submitted.output, Settings(broker_url=gone))
    assert current.running is None and current.broker.startswith("unreachable")
    assert current.pending == 6 and current.committed == 1
    done = _cli(submitted.output, broker=gone)
    assert done.returncode == 0, done.stderr
    assert "broker unreachable" in done.stdout and "?" in done.stdout
    # A job id needs the broker to find the output; the error says so.
    done = _cli(submitted.job_id, broker=gone)
    assert done.returncode == 2 and "neither an output directory" in done.stderr


@pytest.mark.slow  # the CLI in subprocesses
def test_watch_follows_until_complete(submitted: Submission, settings: Settings) -> None:
    layout = OutputLayout(submitted.output)
    for shard in range(6):
        _commit(layout, shard)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")},
           "BATCHFORMERS_BROKER_URL": settings.broker_url}
    watcher = subprocess.Popen([sys.executable, "-m", "producer.cli", "status", submitted.job_id, "--watch", "--json",
                                "--interval", "0.2"], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert watcher.stdout is not None
    first = json.loads(watcher.stdout.readline())
    assert first["state"] == "running" and first["committed"] == 6
    second = json.loads(watcher.stdout.readline())  # it refreshes, and does not stop while running
    assert second["state"] == "running" and second["committed"] == 6
    _commit(layout, 6, rows=6)
    out, _ = watcher.communicate(timeout=30)
    assert watcher.returncode == 0
    last = json.loads(out.strip().splitlines()[-1])
    assert last["state"] == "complete" and last["rows_done"] == 66 and last["eta_seconds"] is None
    assert status(submitted.job_id, settings).state == "complete"


def test_render_andranges(submitted: Submission) -> None:
    from rich.console import Console

    console = Console(record=True, width=100)
    console.print(render(job_status(submitted.output)))
    text = console.export_text()
    assert "pending" in text and "?" in text and submitted.output in text
    assert ranges([7, 1, 2, 3, 5]) == "1-3, 5, 7" and ranges([]) == ""
