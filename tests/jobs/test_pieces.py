"""A shard committed in pieces, in process on a real Redis and real Parquet: resumes, races, exact counts.

The worker's kill is stood in for by a hook that raises out of :func:`jobs.shard.run_and_commit` at a
piece's end (the lease is then left to expire, as a killed worker leaves it); the slow tests of
``tests/worker/test_pieces.py`` kill real workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis

from jobs.errors import ShardError
from jobs.io.layout import OutputLayout, marker_parts
from jobs.io.pieces import ShardPieces, chain, piece_part_name
from jobs.ledger import Ledger, job_keys
from jobs.manifest import Manifest, ShardPlan
from jobs.pieces import merge
from jobs.protocol import lease_key
from jobs.settings import Settings
from jobs.shard import Hooks, run_and_commit, run_shard
from producer.compact import compact
from producer.submit import prepare
from tests.reliability import assert_exactly_once, read_back, tokenize_spec, write_rows
from worker.deliveries import DeliveryCount
from worker.lease import ShardLease
from worker.runners import runner_for

ROWS = 10
LEASE = 30.0


class Killed(BaseException):  # noqa: N818 - stands for SIGKILL: no `except Exception` on the way catches it
    """Raised by a hook where a test kills the worker."""


@pytest.fixture
def job(tmp_path: Path, settings: Settings, client: redis.Redis) -> Iterator[tuple[Manifest, OutputLayout, list[str]]]:
    """A prepared job of one 10-row shard, with its ledger, and the input ids."""
    ids = write_rows(tmp_path / "in.parquet", ROWS)
    spec = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=ROWS, max_retries=3)
    manifest, layout = prepare(spec, settings)
    Ledger.for_manifest(client, manifest, retention=60).rebuild([])
    yield manifest, layout, ids
    client.delete(*job_keys(manifest.job_id), lease_key(manifest.job_id, 0))
    counts = DeliveryCount(client, manifest.job_id, 0)
    client.delete(counts.key, counts.error_key)


class Steps:
    """A ``load`` whose runner records the rows of every run_table call (rows really run)."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, spec: Any, settings: Settings) -> Any:
        task, runner = runner_for(spec, settings)
        steps = self

        class Counting(type(runner)):  # type: ignore[misc]
            wants_row_index = runner.wants_row_index

            def __init__(self) -> None:
                self.__dict__.update(runner.__dict__)

            def run_table(self, inputs: dict[str, list[Any]], progress: Any = None, options: Any = None) -> pa.Table:
                steps.rows.append(len(next(iter(inputs.values()))))
                return runner.run_table(inputs, progress, options)

        return task, Counting()


def _attempt(job: tuple[Manifest, OutputLayout, list[str]], client: redis.Redis, settings: Settings, holder: str,
             *, rows: int, seconds: float = 1e-6, load: Any = runner_for, hooks: Hooks | None = None) -> dict[str, Any]:
    """One holder's attempt of shard 0 with ``piece_rows=rows``; a Killed run leaves its lease to expire."""
    manifest, layout, _ = job
    client.delete(lease_key(manifest.job_id, 0))  # the previous holder's lease has expired
    lease = ShardLease(client, manifest.job_id, 0, holder, LEASE)
    assert lease.acquire()
    ledger = Ledger.for_manifest(client, manifest, retention=60)
    tuned = settings.model_copy(update={"piece_rows": rows, "piece_seconds": seconds})
    result = run_and_commit(manifest, 0, layout, lease, DeliveryCount(client, manifest.job_id, 0), ledger, tuned,
                            load, hooks=hooks)
    lease.release()
    return result


def _kill_after(pieces: int) -> Hooks:
    seen: list[int] = []

    def after_piece(shard: int, stop: int) -> None:
        seen.append(stop)
        if len(seen) == pieces:
            raise Killed(f"after the piece ending at {stop}")

    return Hooks(after_piece=after_piece)


def test_a_long_shard_commits_pieces_that_readers_and_the_marker_see(job: Any, client: redis.Redis,
                                                                      settings: Settings) -> None:
    manifest, layout, ids = job
    result = _attempt(job, client, settings, "a/1", rows=3)
    assert result["rows"] == ROWS and result["errors"] == 0 and result["pieces"] == 4
    marker = layout.read_committed([0])[0]
    assert marker_parts(0, marker) == [piece_part_name(0, start) for start in (0, 3, 6, 9)]
    assert [claim["stop"] for claim in chain(ShardPieces(layout, 0).claims(), ROWS)] == [3, 6, 9, 10]
    table = assert_exactly_once(layout.location, ids)
    assert table.column("row_index").to_pylist() == list(range(ROWS))  # parts sort in row order
    completion = layout.completion()
    assert completion is not None and completion["rows"] == ROWS and completion["errors"] == 0


def test_a_short_shard_is_one_part_as_before(job: Any, client: redis.Redis, settings: Settings) -> None:
    manifest, layout, ids = job
    result = _attempt(job, client, settings, "a/1", rows=3, seconds=3600)  # never a piece before the end
    assert "pieces" not in result and layout.read_committed([0])[0]["part"] == "part-00000.parquet"
    assert [path.name for path in Path(layout.location).glob("*.parquet")] == ["part-00000.parquet"]
    assert_exactly_once(layout.location, ids)


def test_a_shard_in_two_pieces_says_so_in_its_marker(job: Any, client: redis.Redis, settings: Settings) -> None:
    """Two pieces (the fewest that are pieces) are recorded in the task's summary and the marker, with
    ``resumed_at`` 0 for a run that resumed nothing."""
    manifest, layout, ids = job
    result = _attempt(job, client, settings, "a/1", rows=5)
    assert result["pieces"] == 2 and result["resumed_at"] == 0
    marker = layout.read_committed([0])[0]
    assert marker["pieces"] == 2 and marker["resumed_at"] == 0
    assert "copy" not in result and "copy" not in marker  # only a straggler's copy is marked one
    assert_exactly_once(layout.location, ids)


def test_the_worker_hooks_hear_which_shard_each_piece_is_of(tmp_path: Path, client: redis.Redis,
                                                            settings: Settings) -> None:
    """The metrics and fault hooks are told the shard number with every step and piece, here shard 1 of a
    two-shard job (a hook that heard another number would count or kill the wrong shard)."""
    ids = write_rows(tmp_path / "in.parquet", 2 * ROWS)
    spec = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=ROWS, max_retries=3)
    manifest, layout = prepare(spec, settings)
    ledger = Ledger.for_manifest(client, manifest, retention=60)
    ledger.rebuild([])
    heard: list[tuple[Any, ...]] = []
    hooks = Hooks(step=lambda *args: heard.append(("step", *args)),
                  before_piece=lambda *args: heard.append(("before_piece", *args)),
                  after_piece=lambda *args: heard.append(("after_piece", *args)),
                  before_commit=lambda *args: heard.append(("before_commit", *args)))
    lease = ShardLease(client, manifest.job_id, 1, "a/1", LEASE)
    counts = DeliveryCount(client, manifest.job_id, 1)
    assert lease.acquire()
    try:
        tuned = settings.model_copy(update={"piece_rows": 4, "piece_seconds": 1e-6})
        result = run_and_commit(manifest, 1, layout, lease, counts, ledger, tuned, runner_for, hooks=hooks)
    finally:
        lease.release()
        client.delete(*job_keys(manifest.job_id), counts.key, counts.error_key)
    assert result["rows"] == ROWS and result["pieces"] == 3
    assert heard == [("step", 1, 0, 4), ("before_piece", 1), ("after_piece", 1, 4),
                     ("step", 1, 4, 8), ("before_piece", 1), ("after_piece", 1, 8),
                     ("step", 1, 8, 10), ("before_commit", 1)]  # the last piece is the shard's own commit
    assert read_back(layout.location).column("id").to_pylist() == ids[ROWS:]


def test_steps_that_fit_in_the_piece_time_go_to_the_runner_at_once(job: Any, client: redis.Redis,
                                                                    settings: Settings) -> None:
    """The runner length-sorts within one run: after the first step it gets every whole step the rate says
    will end within the piece's time, while the step hook still hears each step."""
    manifest, layout, ids = job
    runs, heard = Steps(), []
    hooks = Hooks(step=lambda shard, start, stop: heard.append((start, stop)))
    result = _attempt(job, client, settings, "a/1", rows=3, seconds=3600, load=runs, hooks=hooks)
    assert runs.rows == [3, 7] and heard == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert "pieces" not in result and result["rows"] == ROWS
    assert_exactly_once(layout.location, ids)


def test_a_piece_that_is_out_of_time_runs_one_step_at_a_time(job: Any, client: redis.Redis,
                                                             settings: Settings) -> None:
    manifest, layout, ids = job
    runs = Steps()
    result = _attempt(job, client, settings, "a/1", rows=3, seconds=1e-6, load=runs)
    assert runs.rows == [3, 3, 3, 1] and result["pieces"] == 4
    assert_exactly_once(layout.location, ids)


def test_a_killed_holder_is_resumed_after_its_last_piece(job: Any, client: redis.Redis, settings: Settings) -> None:
    manifest, layout, ids = job
    first = Steps()
    with pytest.raises(Killed):
        _attempt(job, client, settings, "a/1", rows=3, load=first, hooks=_kill_after(2))
    assert first.rows == [3, 3] and not layout.is_committed(0)
    assert layout.read_committed([0]) == {} and Ledger.for_manifest(client, manifest).read().rows == 0  # type: ignore[union-attr]
    second = Steps()
    result = _attempt(job, client, settings, "b/1", rows=4, load=second)  # another worker, another piece size
    assert second.rows == [4], "the rows of committed pieces were run again"
    assert result["rows"] == ROWS and result["resumed_at"] == 6 and result["attempt"] == 2
    assert_exactly_once(layout.location, ids)
    assert layout.completion()["rows"] == ROWS  # type: ignore[index]


def test_a_claim_whose_part_never_came_is_redone_for_exactly_its_rows(job: Any, client: redis.Redis,
                                                                       settings: Settings) -> None:
    manifest, layout, ids = job
    with pytest.raises(Killed):
        _attempt(job, client, settings, "a/1", rows=3, hooks=_kill_after(1))
    store = ShardPieces(layout, 0)
    assert store.claim({"start": 3, "stop": 5, "rows": 2, "errors": 0, "truncated": 0, "holder": "dead/1"})
    steps = Steps()
    result = _attempt(job, client, settings, "b/1", rows=4, load=steps)
    assert steps.rows == [2, 4, 1] and result["rows"] == ROWS  # the claim's rows [3, 5), then on from 5
    assert [claim["start"] for claim in chain(store.claims(), ROWS)] == [0, 3, 5, 9]
    assert_exactly_once(layout.location, ids)


def test_two_holders_racing_for_a_piece_commit_it_once(job: Any, client: redis.Redis, settings: Settings) -> None:
    """A holder paused past its lease claims the piece the one that took over had claimed meanwhile,
    with other bounds: it loses the claim, follows the winner's chain and no row is in two parts."""
    manifest, layout, ids = job
    store = ShardPieces(layout, 0)
    raced: list[int] = []

    def takeover_commits_first(shard: int) -> None:
        if raced:
            return
        raced.append(shard)
        for start, stop in ((0, 4), (4, 7)):  # the one that took over committed two pieces meanwhile
            table, _ = run_shard(manifest, ShardPlan(0, 0, start, stop), *runner_for(manifest.job_spec(), settings))
            assert store.claim({"start": start, "stop": stop, "rows": stop - start, "errors": 0, "truncated": 0,
                                "holder": "b/1"})
            store.publish(start, table)

    steps = Steps()
    result = _attempt(job, client, settings, "a/1", rows=3, load=steps, hooks=Hooks(before_piece=takeover_commits_first))
    assert raced and result["rows"] == ROWS and steps.rows == [3, 3]  # its lost piece, then rows [7, 10)
    assert [(claim["start"], claim["holder"]) for claim in chain(store.claims(), ROWS)] == [
        (0, "b/1"), (4, "b/1"), (7, "a/1")]
    assert_exactly_once(layout.location, ids)


def test_a_lost_lease_stops_the_next_piece(job: Any, client: redis.Redis, settings: Settings) -> None:
    manifest, layout, ids = job

    def taken_over(shard: int, stop: int) -> None:
        client.set(lease_key(manifest.job_id, 0), "b/1")

    result = _attempt(job, client, settings, "a/1", rows=3, hooks=Hooks(after_piece=taken_over))
    assert result == {"shard": 0, "skipped": "lease lost"}
    assert list(ShardPieces(layout, 0).claims()) == [0] and not layout.is_committed(0)
    assert read_back(layout.location).column("id").to_pylist() == ids[:3]


def test_compact_merges_pieces_and_keeps_every_row_once(job: Any, client: redis.Redis, settings: Settings) -> None:
    manifest, layout, ids = job
    _attempt(job, client, settings, "a/1", rows=2)
    assert len(list(Path(layout.location).glob("*.parquet"))) == 5
    done = compact(layout.location)
    assert done.parts_before == 5 and done.parts_after == 1
    table = read_back(layout.location)
    assert table.column("row_index").to_pylist() == list(range(ROWS)) and table.column("id").to_pylist() == ids


def test_merge_adds_counts_and_stage_seconds() -> None:
    merged = merge({"rows": 2, "seconds": 1.0, "stages": {"read": 0.5}}, {"rows": 3, "seconds": 0.25,
                                                                        "stages": {"read": 0.25, "model": 1.0}})
    assert merged == {"rows": 5, "seconds": 1.25, "stages": {"read": 0.75, "model": 1.0}}


def test_a_claim_that_is_no_row_range_fails_the_shard_instead_of_looping(job: Any, client: redis.Redis,
                                                                          settings: Settings) -> None:
    manifest, layout, _ = job
    assert ShardPieces(layout, 0).claim({"start": 0, "stop": 0, "rows": 0, "errors": 0, "truncated": 0})
    with pytest.raises(ShardError, match="not a row range"):
        _attempt(job, client, settings, "a/1", rows=3)
    assert "not a row range" in layout.read_failed([0])[0]["error"]
