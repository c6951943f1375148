"""Helpers of the fault tests (issue 4): small inputs, reading every part back, waiting on Redis."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import redis

from jobs import routing
from jobs.io.layout import OutputLayout, marker_parts
from jobs.protocol import LEASE_PREFIX, lease_key
from jobs.spec import JobSpec, load_spec
from tests.models import tiny_model_path


def write_rows(path: Path, count: int, first: int = 0) -> list[str]:
    """A Parquet file of ``count`` short sentences with ids ``r<first>`` ...; returns the ids."""
    ids = [f"r{i}" for i in range(first, first + count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": [f"John Smith visited Paris on day {i}." for i in
                                                  range(first, first + count)]}), path)
    return ids


def tokenize_spec(source: Path | str, output: Path | str, **fields: Any) -> JobSpec:
    raw = {"task": "tokenize", "model": str(tiny_model_path("bert-ner")), "input": str(source),
           "columns": {"id": "id"}, "output": str(output), "shard_rows": 5, **fields}
    return load_spec(raw)


def read_back(output: Path | str) -> pa.Table:
    """Every row of every visible part, as a reader (pyarrow.dataset) sees them."""
    return ds.dataset(str(output), format="parquet").to_table()


def assert_exactly_once(output: Path | str, ids: list[str]) -> pa.Table:
    """Each input id once, row_index 0..n-1 once each, nothing else: no row lost, none twice;
    the only parts a reader can see are those of committed shards, and no temporary file is left."""
    visible = {path.name for path in Path(output).glob("*.parquet")}
    assert visible == {name for shard, marker in committed_markers(output).items()
                       for name in marker_parts(shard, marker)}  # a shard committed in pieces lists them
    assert temporaries(output) == []
    table = read_back(output)
    got = table.column("id").to_pylist()
    lost = set(ids) - set(got)
    twice = len(got) - len(set(got))
    assert not lost and twice == 0, f"{len(lost)} rows lost, {twice} duplicated"
    assert sorted(got) == sorted(ids)
    assert sorted(table.column("row_index").to_pylist()) == list(range(len(ids)))
    return table


def assert_completed(output: Path | str, rows: int) -> dict[str, Any]:
    """_SUCCESS is there (its O_EXCL create lets one writer only) with the job's totals."""
    wait_until(lambda: OutputLayout(str(output)).is_complete(), 30, "_SUCCESS")
    completion = OutputLayout(str(output)).completion()
    assert completion is not None and completion["rows"] == rows, completion
    return completion


def committed_markers(output: Path | str) -> dict[int, dict[str, Any]]:
    return OutputLayout(str(output)).committed()


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def lease_holders(redis_url: str, job_id: str) -> dict[int, str]:
    """Shard -> holder of every live lease of the job."""
    client = redis.Redis.from_url(redis_url)
    holders = {}
    for key in client.scan_iter(f"{LEASE_PREFIX}{job_id}:*"):
        value = client.get(key)
        if value:
            holders[int(key.decode().rsplit(":", 1)[1])] = value.decode()
    return holders


def first_held_shard(redis_url: str, job_id: str, timeout: float = 60,
                     started: Path | None = None) -> tuple[int, str, float]:
    """(shard, holder, seconds left on its lease) of the first running shard of the job. With ``started``
    (a ``count=PATH`` fault file), once that start is recorded too: the lease is taken before the rows
    start, and a loaded machine can take seconds between the two."""
    holders = wait_until(lambda: lease_holders(redis_url, job_id), timeout, "a lease")
    shard, holder = next(iter(holders.items()))
    if started is not None:
        wait_until(lambda: starts(started).get(shard), timeout, f"shard {shard}'s start")
    remaining = redis.Redis.from_url(redis_url).pttl(lease_key(job_id, shard)) / 1000
    return shard, holder, remaining


def worker_number(holder: str) -> int:
    """Which of ``start_workers``' processes holds a lease (holders read ``local<N>-...@host/pid``)."""
    return int(holder.split("-", 1)[0].removeprefix("local"))


def worker_logs(log_dir: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in sorted(Path(log_dir).glob("*.log")))


def pools_warm(log_dir: Path, count: int) -> bool:
    """Whether ``count`` pool processes logged their preload import (:mod:`worker.preload`): a shard
    delivered from now on starts at once, not after seconds of imports that its lease does not cover."""
    return len(re.findall(r"batchformers: imported [^\n]*transformers[^\n]* in process", worker_logs(log_dir))) >= count


def completions_logged(log_dir: Path, job_id: str) -> int:
    """How many workers wrote the job's _SUCCESS marker (each logs it once)."""
    return worker_logs(log_dir).count(f"batchformers: job {job_id} complete")


def temporaries(output: Path | str) -> list[str]:
    """Temporary files anywhere under a local output (a killed writer's leftovers)."""
    return sorted(str(path.relative_to(output)) for path in Path(output).rglob("*.tmp"))


def starts(count_file: Path) -> dict[int, list[float]]:
    """Shard -> times it started, from the ``count=PATH`` fault file (one line per start)."""
    found: dict[int, list[float]] = {}
    if count_file.exists():
        for line in count_file.read_text().splitlines():
            shard, _pid, when = line.split()
            found.setdefault(int(shard), []).append(float(when))
    return found


def queue_lists(redis_url: str, queue: str) -> list[str]:
    """The Redis lists of ``queue`` and of every job queue routed under it, each priority's own."""
    client = redis.Redis.from_url(redis_url)
    queues = [queue, *routing.read_routes(client, queue)]
    return [key for name in queues for key in routing.queue_keys(name)]


def queued_messages(redis_url: str, queue: str) -> list[bytes]:
    """Every message waiting in ``queue`` or its job queues (see :mod:`jobs.routing`)."""
    client = redis.Redis.from_url(redis_url)
    return [raw for key in queue_lists(redis_url, queue) for raw in client.lrange(key, 0, -1)]


def in_flight(redis_url: str, queue: str) -> int:
    """Messages of ``queue`` (or its job queues) waiting or delivered to a worker and not yet acked."""
    client = redis.Redis.from_url(redis_url)
    names = {queue, *routing.read_routes(client, queue)}
    unacked = sum(1 for raw in client.hvals("unacked") if json.loads(raw)[-1] in names)
    return len(queued_messages(redis_url, queue)) + unacked


def wait_drained(redis_url: str, queue: str, job_id: str, timeout: float = 60) -> None:
    """Until nothing of the job is queued, delivered or leased: every copy of every message is done."""
    wait_until(lambda: in_flight(redis_url, queue) == 0 and not lease_holders(redis_url, job_id), timeout,
               "the queue to drain")
