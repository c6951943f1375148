"""The warm pool: a second ``run`` reuses the first one's Redis and workers (model loaded once), an
interrupted run stops the whole pool, an idle pool stops by itself, and a pool is only reused by a
run with the same environment. Real processes: the supervisor, redis-server and Celery workers."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import suppress
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.errors import BatchformersError
from jobs.io.layout import OutputLayout
from jobs.spec import JobSpec
from producer import warm_pool
from producer.api import run
from producer.interruption import interruption
from producer.run import RunInterrupted
from tests.models import tiny_model_path


@pytest.fixture
def pool_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("BATCHFORMERS_")]:
        monkeypatch.delenv(name)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BATCHFORMERS_CACHE_DIR", str(cache))
    return cache


def _spec(tmp_path: Path, news_texts: list[str], name: str, copies: int = 1, shard_rows: int = 1000) -> JobSpec:
    source = tmp_path / f"{name}.parquet"
    texts = news_texts * copies
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "body": texts}), source)
    return JobSpec.model_validate({"task": "ner", "model": str(tiny_model_path("bert-ner")), "input": str(source),
                                   "columns": {"text": "body", "id": "doc_id"}, "shard_rows": shard_rows,
                                   "output": str(tmp_path / "out" / name)})


def _pool_state(cache: Path) -> warm_pool.PoolState | None:
    states = list((cache / warm_pool.STATE_SUBDIR).glob("*.json"))
    return warm_pool.PoolState.read(states[0]) if len(states) == 1 else None


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with suppress(ChildProcessError):  # our child when this process started it
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return False


def _model_loads(cache: Path) -> int:
    logs = (cache / warm_pool.STATE_SUBDIR).glob("*-logs/worker-*.log")
    return sum(log.read_text(errors="replace").count("batchformers: loaded ner model") for log in logs)


@pytest.mark.slow  # a supervisor, redis-server and a Celery worker, reused by three runs
def test_runs_share_a_warm_pool_and_an_interrupted_run_stops_it(tmp_path: Path, news_texts: list[str],
                                                                pool_env: Path) -> None:
    first = run(_spec(tmp_path, news_texts, "first"), keep_warm=60)
    assert first.state == "complete" and first.rows_done == len(news_texts)
    state = _pool_state(pool_env)
    assert state is not None, "the pool outlives the run that started it"
    assert (pool_env / warm_pool.STATE_SUBDIR / f"{warm_pool.pool_key(1)}.json").stat().st_mode & 0o077 == 0

    second = run(_spec(tmp_path, news_texts, "second"), keep_warm=60)
    assert second.state == "complete" and _pool_state(pool_env) == state, "the second run used the same pool"
    assert _model_loads(pool_env) == 1, "the model stayed loaded between the runs"
    one, two = (pq.read_table(f"{tmp_path}/out/{name}", columns=["doc_id", "entities"]) for name in ("first", "second"))
    assert one.num_rows == len(news_texts) and one.equals(two)

    long_job = _spec(tmp_path, news_texts, "long", copies=60, shard_rows=20)
    timer: list[threading.Timer] = []

    def interrupt_soon(_: object) -> None:
        timer.append(threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)))
        timer[0].start()

    with pytest.raises(RunInterrupted) as stopped:
        run(long_job, keep_warm=60, on_submit=interrupt_soon)
    assert _gone(state.pid, within=15), "an interrupted run stops the pool's supervisor"
    assert _pool_state(pool_env) is None, "and its state file"
    status = stopped.value.status
    assert status is not None and status.committed < status.shards
    assert interruption(OutputLayout(long_job.output)) is not None
    with pytest.raises(Exception):  # noqa: B017, PT011 - any refusal: the Redis is gone with the pool
        warm_pool.broker_client(state.url, timeout=1).ping()


@pytest.mark.slow  # a supervisor and a Celery worker that boot and stop by themselves
def test_an_idle_pool_stops_by_itself(pool_env: Path) -> None:
    pool = warm_pool.acquire(workers=1, idle_seconds=1.0)
    assert pool.started and _pool_state(pool_env) == pool.state
    again = warm_pool.acquire(workers=1, idle_seconds=1.0)
    assert not again.started and again.state == pool.state, "a live pool is found, not started twice"
    assert _gone(pool.state.pid, within=20), "no run attached: it stops after its idle time"
    assert _pool_state(pool_env) is None


def test_a_pool_is_reused_only_by_the_same_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"BATCHFORMERS_LEASE_SECONDS": "20", "HF_HOME": "/h", "HOME": "/root"}
    key = warm_pool.pool_key(1, base)
    assert warm_pool.pool_key(2, base) != key, "worker count"
    assert warm_pool.pool_key(1, {**base, "BATCHFORMERS_LEASE_SECONDS": "5"}) != key, "a worker setting"
    assert warm_pool.pool_key(1, {**base, "HF_HOME": "/other"}) != key, "where models come from"
    assert warm_pool.pool_key(1, {**base, "HOME": "/elsewhere", "TERM": "x"}) == key, "unrelated variables"
    assert warm_pool.pool_key(1, {**base, "BATCHFORMERS_KEEP_WARM_SECONDS": "9"}) == key, "how long it is kept"
    monkeypatch.chdir("/")
    assert warm_pool.pool_key(1, base) != key, "the working directory (relative paths in specs)"


def test_an_open_state_directory_is_refused(tmp_path: Path) -> None:
    from jobs.settings import Settings

    settings = Settings(cache_dir=str(tmp_path))
    directory = warm_pool.state_directory(settings)
    assert directory.stat().st_mode & 0o777 == 0o700
    directory.chmod(0o755)
    with pytest.raises(BatchformersError, match="0700"):
        warm_pool.state_directory(settings)


def test_a_broken_state_file_reads_as_no_pool(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_text('{"pid": 1, "url"')
    assert warm_pool.PoolState.read(path) is None
    state = warm_pool.PoolState(pid=2 ** 22 + 7, url="redis://:x@127.0.0.1:1/0", log_dir=str(tmp_path))
    state.write(path)
    assert warm_pool.PoolState.read(path) == state and path.stat().st_mode & 0o777 == 0o600
    assert not state.alive(), "no such process: not a pool to use"
