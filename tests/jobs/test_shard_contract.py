"""One shard attempt's contract, run in process on a real Redis: what it commits, counts, fails or retries.

A safety net for moving the module: what :func:`run_and_commit` returns, leaves in the output (parts
read back, commit and failure markers), on the broker (delivery count, last error, ledger) and
raises, for a commit, a redelivery, a permanent error, a transient one and a run out of attempts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from jobs.engine.base import RunResult, RunStats
from jobs.errors import ModelLoadError, ShardError
from jobs.io.layout import COMMIT_POINTS, OutputLayout
from jobs.ledger import Ledger, job_keys
from jobs.manifest import Manifest
from jobs.protocol import lease_key
from jobs.settings import Settings
from jobs.shard import (
    TIME_LIMIT_MESSAGE,
    WORKER_LOST,
    Hooks,
    RetryLater,
    backoff,
    error_text,
    first_row,
    gave_up,
    is_permanent,
    run_and_commit,
    run_shard,
    timing,
    truncated_rows,
)
from producer.submit import prepare
from tests.reliability import tokenize_spec, write_rows
from worker.deliveries import DeliveryCount
from worker.lease import ShardLease
from worker.runners import runner_for

ROWS = 4
LEASE = 30.0
HOLDER = "node-a/1"


class Recording:
    """Wraps a real runner: records what ``run_table`` was given; asks for row indexes when told to; reports
    ``stats`` in place of the run's own when they are set."""

    def __init__(self, runner: Any, wants_row_index: bool = False) -> None:
        self.runner = runner
        if wants_row_index:  # otherwise the attribute is the runner's own (tokenize has none)
            self.wants_row_index = True
        self.calls: list[tuple[dict[str, list[Any]], Any, Any]] = []
        self.stats: RunStats | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)

    def run_table(self, inputs: dict[str, list[Any]], progress: Any = None, options: Any = None) -> RunResult:
        self.calls.append((dict(inputs), progress, options))
        table, stats = self.runner.run_table({k: v for k, v in inputs.items() if k != "row_index"}, progress, options)
        return RunResult(table, self.stats or stats)


class Loader:
    """A ``load`` that keeps the spec it was given and the runner it made."""

    def __init__(self, wants_row_index: bool = False) -> None:
        self.wants_row_index = wants_row_index
        self.specs: list[Any] = []
        self.runner: Recording | None = None

    def __call__(self, spec: Any, settings: Settings) -> Any:
        self.specs.append(spec)
        task, runner = runner_for(spec, settings)
        self.runner = Recording(runner, self.wants_row_index)
        return task, self.runner


class ConnectError(Exception):
    """Named like httpx's: transient by its name, not its type."""


class Slow(TimeoutError):
    """Transient by its type, whatever its name."""


class TimeLimit(Exception):
    """Stands for Celery's SoftTimeLimitExceeded."""


@pytest.fixture
def job(tmp_path: Path, settings: Settings, client: redis.Redis) -> Iterator[tuple[Manifest, OutputLayout, Ledger]]:
    """A prepared job of 2 two-row shards that allows one retry, with its ledger."""
    write_rows(tmp_path / "in.parquet", ROWS)
    spec = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=2, max_retries=1)
    manifest, layout = prepare(spec, settings)
    ledger = Ledger.for_manifest(client, manifest, retention=60)
    ledger.rebuild([])
    yield manifest, layout, ledger
    client.delete(*job_keys(manifest.job_id))
    for shard in range(len(manifest.shards)):
        client.delete(DeliveryCount(client, manifest.job_id, shard).key,
                      DeliveryCount(client, manifest.job_id, shard).error_key)


def _run(job: tuple[Manifest, OutputLayout, Ledger], shard: int, client: redis.Redis, settings: Settings,
         load: Any = runner_for, **options: Any) -> dict[str, Any]:
    manifest, layout, ledger = job
    lease = ShardLease(client, manifest.job_id, shard, HOLDER, LEASE)
    assert lease.acquire()
    try:
        return run_and_commit(manifest, shard, layout, lease, DeliveryCount(client, manifest.job_id, shard), ledger,
                              settings, load, **options)
    finally:
        lease.release()


def _raising(exc: Exception) -> Any:
    def load(*_: Any) -> Any:
        raise exc
    return load


def _failure(layout: OutputLayout, shard: int) -> dict[str, Any]:
    return layout.read_failed([shard])[shard]


def test_a_run_commits_its_rows_and_the_last_completes_the_job(job: tuple[Manifest, OutputLayout, Ledger],
                                                               client: redis.Redis, settings: Settings) -> None:
    manifest, layout, ledger = job
    calls: list[tuple[Any, ...]] = []
    hooks = Hooks(started=lambda s: calls.append(("started", s)),
                  before_commit=lambda s: calls.append(("before_commit", s)),
                  commit_point=lambda s, point: calls.append(("point", s, point)),
                  committed=lambda task, summary: calls.append(("committed", task, summary["rows"])),
                  model_load=lambda: 0.12345)
    before = time.time()
    progress = lambda done: None  # noqa: E731
    loader = Loader()
    result = _run(job, 1, client, settings, load=loader, hooks=hooks, enqueued_at=before - 5, progress=progress)
    assert loader.runner is not None and len(loader.runner.calls) == 1
    inputs, given_progress, options = loader.runner.calls[0]
    assert given_progress is progress and options.overlap == settings.overlap and "row_index" not in inputs
    assert loader.specs == [manifest.job_spec()]
    assert result["shard"] == 1 and result["job"] == manifest.job_id and result["attempt"] == 1
    assert result["rows"] == 2 and result["errors"] == 0 and result["worker_name"] == HOLDER
    assert result["model_load_seconds"] == 0.123 and result["queue_wait_seconds"] >= 5
    assert before - 1 <= result["started_at"] <= time.time()
    assert calls[0] == ("started", 1) and calls[1] == ("before_commit", 1)
    points = [call[2] for call in calls if call[0] == "point"]
    assert {call[1] for call in calls if call[0] == "point"} == {1}
    assert points == [*COMMIT_POINTS, "committed"] and calls[-1] == ("committed", "tokenize", 2)
    part = pq.read_table(next((Path(layout.location)).glob("*.parquet")))
    assert part.column("row_index").to_pylist() == [2, 3] and part.column("id").to_pylist() == ["r2", "r3"]
    assert part.column("error").null_count == 2
    marker = layout.read_committed([1])[1]
    assert marker["attempt"] == 1 and marker["rows"] == 2
    counts = DeliveryCount(client, manifest.job_id, 1)
    assert client.exists(counts.key, counts.error_key) == 0  # cleared once committed
    tally = ledger.read()
    assert tally is not None and tally.committed == {1} and not layout.is_finished()
    _run(job, 0, client, settings)
    completion = layout.completion()
    assert completion is not None and completion["rows"] == ROWS
    assert before <= completion["first_start"] <= completion["last_commit"] <= time.time()


def test_a_redelivered_committed_shard_is_skipped_and_counted(job: tuple[Manifest, OutputLayout, Ledger],
                                                              client: redis.Redis, settings: Settings) -> None:
    manifest, layout, ledger = job
    _run(job, 0, client, settings)
    ledger.drop()
    ledger.rebuild([])  # the count of shard 0 was lost: its worker died before counting it
    assert _run(job, 0, client, settings) == {"shard": 0, "skipped": "already committed"}
    tally = ledger.read()
    assert tally is not None and tally.committed == {0}
    assert DeliveryCount(client, manifest.job_id, 0).increment() == 1  # the skip did not count a start


def test_a_redelivered_committed_shard_without_a_ledger_is_skipped(job: tuple[Manifest, OutputLayout, Ledger],
                                                                   client: redis.Redis, settings: Settings) -> None:
    manifest, layout, _ = job
    _run(job, 0, client, settings)
    lease = ShardLease(client, manifest.job_id, 0, HOLDER, LEASE)
    assert lease.acquire()
    try:
        result = run_and_commit(manifest, 0, layout, lease, DeliveryCount(client, manifest.job_id, 0), None,
                                settings, runner_for)
    finally:
        lease.release()
    assert result == {"shard": 0, "skipped": "already committed"}


def test_a_permanent_error_fails_the_shard_at_once(job: tuple[Manifest, OutputLayout, Ledger], client: redis.Redis,
                                                   settings: Settings) -> None:
    manifest, layout, ledger = job
    with pytest.raises(ShardError, match=f"shard 0 of job {manifest.job_id} failed: no such model"):
        _run(job, 0, client, settings, load=_raising(ModelLoadError("no such model")))
    failure = _failure(layout, 0)
    assert failure["error"] == "no such model" and failure["attempts"] == 1
    tally = ledger.read()
    assert tally is not None and tally.failed == {0: "no such model"}
    assert not layout.is_committed(0)


def test_a_transient_error_asks_for_a_retry_then_gives_up(job: tuple[Manifest, OutputLayout, Ledger],
                                                          client: redis.Redis, settings: Settings) -> None:
    manifest, layout, ledger = job
    with pytest.raises(RetryLater) as retry:
        _run(job, 0, client, settings, load=_raising(RuntimeError("flaky")))
    assert retry.value.error == "RuntimeError: flaky" and retry.value.delay == backoff(1, settings.lease_seconds)
    assert str(retry.value) == "RuntimeError: flaky"
    assert DeliveryCount(client, manifest.job_id, 0).last_error() == "RuntimeError: flaky"
    assert layout.read_failed([0]) == {}
    with pytest.raises(ShardError, match=manifest.job_id):  # the second of 1 + max_retries attempts
        _run(job, 0, client, settings, load=_raising(RuntimeError("flaky")))
    failure = _failure(layout, 0)
    assert failure["error"] == "gave up after 2 attempts; last: RuntimeError: flaky" and failure["attempts"] == 2
    tally = ledger.read()
    assert tally is not None and tally.failed == {0: failure["error"]}


def test_the_last_attempt_allowed_still_runs(job: tuple[Manifest, OutputLayout, Ledger], client: redis.Redis,
                                             settings: Settings) -> None:
    manifest, layout, _ = job
    with pytest.raises(RetryLater):
        _run(job, 0, client, settings, load=_raising(RuntimeError("flaky")))
    result = _run(job, 0, client, settings)
    assert result["attempt"] == 2 and layout.read_committed([0])[0]["attempt"] == 2
    assert layout.read_failed([0]) == {}


def test_the_worker_settings_decide_the_overlap(job: tuple[Manifest, OutputLayout, Ledger], client: redis.Redis,
                                                settings: Settings) -> None:
    loader = Loader()
    _run(job, 0, client, settings.model_copy(update={"overlap": False}), load=loader)
    assert loader.runner is not None and loader.runner.calls[0][2].overlap is False


def test_a_run_whose_output_holds_another_job_says_so(job: tuple[Manifest, OutputLayout, Ledger],
                                                      client: redis.Redis, settings: Settings,
                                                      tmp_path: Path) -> None:
    manifest, layout, _ = job
    write_rows(tmp_path / "in2.parquet", 2)
    other, _ = prepare(tokenize_spec(tmp_path / "in2.parquet", tmp_path / "elsewhere", shard_rows=1), settings)
    hooks = Hooks(before_commit=lambda _shard: layout.write_manifest(other))
    assert _run(job, 0, client, settings, hooks=hooks) == {"shard": 0, "skipped": "the output holds another job"}
    assert not layout.is_committed(0)


def test_run_shard_passes_row_indexes_and_options_to_the_runner(job: tuple[Manifest, OutputLayout, Ledger],
                                                                settings: Settings) -> None:
    manifest, _, _ = job
    loader = Loader(wants_row_index=True)
    task, runner = loader(manifest.job_spec(), settings)
    progress = lambda done: None  # noqa: E731
    table, summary = run_shard(manifest, manifest.shards[1], task, runner, progress)
    inputs, given_progress, options = loader.runner.calls[0]  # type: ignore[union-attr]
    assert inputs["row_index"] == [2, 3] and given_progress is progress and options.overlap is True
    assert options.batch_size == manifest.job_spec().batch_size
    assert table.column("row_index").type == pa.int64() and table.column("row_index").to_pylist() == [2, 3]
    assert 0 <= summary["stages"]["read"] <= summary["seconds"] + 0.001
    run_shard(manifest, manifest.shards[0], task, runner, overlap=False)
    assert loader.runner.calls[1][2].overlap is False and loader.runner.calls[1][0]["row_index"] == [0, 1]  # type: ignore[union-attr]


def test_a_cause_from_the_network_makes_an_error_transient() -> None:
    def chained(*causes: BaseException) -> ModelLoadError:
        error = ModelLoadError("cannot load")
        inner: BaseException = error
        for cause in causes:
            inner.__context__ = cause
            inner = cause
        return error

    assert is_permanent(chained(ValueError("bad")))
    assert not is_permanent(chained(OSError("wrapped"), ConnectionError("reset")))  # two links down
    assert not is_permanent(chained(ConnectError("by name")))
    assert not is_permanent(chained(Slow("by type")))
    with_cause = ModelLoadError("x")
    with_cause.__cause__ = OSError("y")
    with_cause.__cause__.__context__ = TimeoutError("z")
    assert not is_permanent(with_cause)


def test_a_time_limit_says_so(job: tuple[Manifest, OutputLayout, Ledger], client: redis.Redis,
                              settings: Settings) -> None:
    with pytest.raises(RetryLater) as retry:
        _run(job, 0, client, settings, load=_raising(TimeLimit()), time_limits=(TimeLimit,))
    assert retry.value.error == TIME_LIMIT_MESSAGE


def test_a_broker_error_is_raised_as_it_is(job: tuple[Manifest, OutputLayout, Ledger], client: redis.Redis,
                                           settings: Settings) -> None:
    manifest, layout, _ = job
    with pytest.raises(redis.ConnectionError):
        _run(job, 0, client, settings, load=_raising(redis.ConnectionError("gone")))
    assert layout.read_failed([0]) == {}
    assert DeliveryCount(client, manifest.job_id, 0).last_error() == WORKER_LOST.format(holder=HOLDER)


def test_a_shard_that_crashed_every_start_fails_with_its_last_error(job: tuple[Manifest, OutputLayout, Ledger],
                                                                    client: redis.Redis, settings: Settings) -> None:
    manifest, layout, ledger = job
    counts = DeliveryCount(client, manifest.job_id, 0)
    counts.increment()
    counts.increment()  # both starts allowed began; neither finished
    counts.record_error("killed on node-b/2")
    with pytest.raises(ShardError, match=manifest.job_id):
        _run(job, 0, client, settings)
    failure = _failure(layout, 0)
    assert failure["error"] == "gave up after 2 attempts; last: killed on node-b/2" and failure["attempts"] == 2
    tally = ledger.read()
    assert tally is not None and 0 in tally.failed
    assert _run(job, 0, client, settings) == {"shard": 0, "skipped": "already failed"}


def test_a_shard_that_crashed_with_no_error_recorded_names_an_unknown_worker(
        job: tuple[Manifest, OutputLayout, Ledger], client: redis.Redis, settings: Settings) -> None:
    manifest, layout, _ = job
    counts = DeliveryCount(client, manifest.job_id, 0)
    counts.increment()
    counts.increment()
    with pytest.raises(ShardError):
        _run(job, 0, client, settings)
    assert _failure(layout, 0)["error"] == gave_up(2, WORKER_LOST.format(holder="an unknown worker"))


def test_a_run_that_lost_its_lease_does_not_commit(job: tuple[Manifest, OutputLayout, Ledger], client: redis.Redis,
                                                   settings: Settings) -> None:
    manifest, layout, _ = job

    def lost(shard: int) -> None:  # paused past its lease: another worker holds it now
        client.set(lease_key(manifest.job_id, shard), "node-b/2")

    assert _run(job, 0, client, settings, hooks=Hooks(before_commit=lost)) == {"shard": 0, "skipped": "lease lost"}
    assert not layout.is_committed(0) and list(Path(layout.location).glob("*.parquet")) == []


def test_the_small_rules() -> None:
    assert [backoff(n, 100) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff(10, 100) == 60.0 and backoff(10, 30) == 30.0 and backoff(3, 5) == 5.0
    assert isinstance(backoff(1, 100), float)
    assert gave_up(1, "x") == "gave up after 1 attempt; last: x"
    assert gave_up(2, "x") == "gave up after 2 attempts; last: x"
    assert error_text(ModelLoadError("m")) == "m" and error_text(ValueError("v")) == "ValueError: v"
    assert timing("w", 10.12345, None, None) == {"worker_name": "w", "started_at": 10.123}
    assert timing("w", 10.0, 12.0, 0.0) == {"worker_name": "w", "started_at": 10.0, "queue_wait_seconds": 0.0,
                                            "model_load_seconds": 0.0}
    assert timing("w", 10.0, 7.5, None)["queue_wait_seconds"] == 2.5
    assert timing("w", 10.0, 8.12345, 0.45678) == {"worker_name": "w", "started_at": 10.0,
                                                   "queue_wait_seconds": 1.877, "model_load_seconds": 0.457}
    assert truncated_rows(pa.table({"x": [1, 2]})) == 0
    assert truncated_rows(pa.table({"truncated": [True, None, False, True]})) == 2


def test_first_row_counts_the_rows_of_earlier_files(tmp_path: Path, settings: Settings) -> None:
    write_rows(tmp_path / "in" / "a.parquet", 3)
    write_rows(tmp_path / "in" / "b.parquet", 4, first=3)
    manifest, _ = prepare(tokenize_spec(tmp_path / "in", tmp_path / "out", shard_rows=2), settings)
    found = [(plan.source, plan.start, first_row(manifest, plan)) for plan in manifest.shards]
    assert found == [(0, 0, 0), (0, 2, 2), (1, 0, 3), (1, 2, 5)]


def test_run_shard_summarises_the_rows_batches_and_stages(job: tuple[Manifest, OutputLayout, Ledger],
                                                          settings: Settings) -> None:
    manifest, _, _ = job
    loader = Loader()
    task, runner = loader(manifest.job_spec(), settings)
    _, tokenized = run_shard(manifest, manifest.shards[0], task, runner)
    assert "batches" not in tokenized  # tokenize feeds no model: no batches to report
    runner.stats = RunStats(batches=2, tokens=10, padded_tokens=12, forward_seconds=0.5,
                                 encode_seconds=0.25, decode_seconds=0.125)
    _, summary = run_shard(manifest, manifest.shards[0], task, runner)
    assert summary["rows"] == 2 and summary["errors"] == 0
    assert (summary["batches"], summary["tokens"], summary["padded_tokens"]) == (2, 10, 12)
    read = summary["stages"].pop("read")
    assert summary["stages"] == {"encode": 0.25, "forward": 0.5, "decode": 0.125}
    assert isinstance(summary["seconds"], float) and round(summary["seconds"], 3) == summary["seconds"]
    assert isinstance(read, float) and 0 <= read <= summary["seconds"] + 0.001 and round(read, 4) == read
