"""``batchformers compact``: a finished job's small parts merged into large ones, all or nothing, in order;
and a job of thousands of parts stays readable by DuckDB and polars."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.dispatch import messages_for
from jobs.errors import OutputError
from jobs.io.completion import complete_if_last
from jobs.io.layout import OutputLayout
from jobs.settings import Settings
from producer import compact as compaction
from producer.cli import main
from producer.compact import JOURNAL_FILE, compact, plan_groups
from producer.inspect import inspect_output
from producer.submit import prepare
from tests import test_s3
from tests.reliability import tokenize_spec, write_rows

SHARDS = 40
s3_endpoint, s3_env, s3_bucket = test_s3.s3_endpoint, test_s3.s3_env, test_s3.bucket  # the moto S3 fixtures


def _finished_job(tmp_path: Path, shards: int = SHARDS, complete: bool = True) -> OutputLayout:
    """A job of ``shards`` one-row shards whose parts are written as a worker writes them."""
    write_rows(tmp_path / "in.parquet", shards)
    manifest, layout = prepare(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=1), Settings())
    for plan in manifest.shards:
        table = pa.table({"id": [f"r{plan.index}"], "row_index": pa.array([plan.index], pa.int64()),
                          "num_tokens": [plan.index % 7], "error": pa.array([None], pa.string())})
        layout.commit(plan.index, table, {"rows": 1, "errors": 0, "seconds": 0.01})
    if complete:
        assert complete_if_last(layout, manifest)
    return layout


def _visible(output: Path) -> list[str]:
    return sorted(path.name for path in output.glob("*.parquet"))


def test_groups_are_consecutive_and_near_the_target() -> None:
    assert plan_groups([10] * 7, 30) == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan_groups([50, 10, 10], 30) == [[0], [1, 2]]
    assert plan_groups([], 30) == []


def test_compact_merges_parts_in_row_order(tmp_path: Path) -> None:
    import duckdb
    import polars as pl

    layout = _finished_job(tmp_path)
    output = tmp_path / "out"
    part_size = (output / "part-00000.parquet").stat().st_size
    done = compact(str(output), target_bytes=part_size * 10)
    assert (done.parts_before, done.rows) == (SHARDS, SHARDS) and 4 <= done.parts_after <= 5
    assert len(_visible(output)) == done.parts_after and _visible(output)[0] == "part-00000.parquet"
    # Files in name order, rows in file order: row_index order, every row once.
    in_order = [pq.read_table(output / name).column("row_index").to_pylist() for name in _visible(output)]
    assert [i for rows in in_order for i in rows] == list(range(SHARDS))
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT row_index) FROM '{output}/*.parquet'").fetchall()[0] == (
        SHARDS, SHARDS)
    assert pl.read_parquet(f"{output}/*.parquet")["row_index"].to_list() == list(range(SHARDS))
    assert not list((output / "_batchformers" / "compact").glob("*"))  # nothing staged is left
    # The markers stay: a resubmit skips every shard; inspect still shows the job and its first rows.
    manifest = layout.read_manifest()
    assert messages_for(manifest, layout) == []
    described = inspect_output(str(output), rows=2)
    assert described.rows == SHARDS and [row["row_index"] for row in described.head] == [0, 1]
    # Compacting again with a larger target merges the merged parts; a no-op leaves them.
    assert compact(str(output), target_bytes=part_size * 1000).parts_after == 1
    assert _visible(output) == ["part-00000.parquet"]
    assert compact(str(output), target_bytes=part_size * 1000).parts_after == 1
    assert pq.read_table(output / "part-00000.parquet").column("row_index").to_pylist() == list(range(SHARDS))


def test_an_interrupted_compaction_changes_nothing_visible_then_finishes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _finished_job(tmp_path)
    output = tmp_path / "out"
    before = _visible(output)

    def crash(*_: object) -> None:
        raise KeyboardInterrupt("killed after the commit point")

    assert compact(str(output), target_bytes=1).parts_after == SHARDS  # groups of one part: nothing to do
    monkeypatch.setattr(compaction, "_roll_forward", crash)
    with pytest.raises(KeyboardInterrupt):
        compact(str(output), target_bytes=10**9)
    assert _visible(output) == before and (output / JOURNAL_FILE).exists()
    monkeypatch.undo()
    assert main(["compact", str(output), "--target-mb", "1000"]) == 0  # the CLI rolls the journal forward
    assert _visible(output) == ["part-00000.parquet"]
    assert pq.read_table(output / "part-00000.parquet").column("row_index").to_pylist() == list(range(SHARDS))


def test_compact_refuses_an_unfinished_job(tmp_path: Path) -> None:
    _finished_job(tmp_path, shards=5, complete=False)
    with pytest.raises(OutputError, match="not complete"):
        compact(str(tmp_path / "out"))


@pytest.mark.slow  # 5,000 files written and scanned: a scale check, not a unit test
def test_five_thousand_parts_open_in_duckdb_and_polars(tmp_path: Path) -> None:
    import duckdb
    import polars as pl

    output = tmp_path / "many"
    output.mkdir()
    parts = 5000
    for shard in range(parts):
        pq.write_table(pa.table({"row_index": pa.array([shard * 2, shard * 2 + 1], pa.int64()),
                                 "num_tokens": [1, 2]}), output / f"part-{shard:05d}.parquet")
    began = time.perf_counter()
    assert duckdb.sql(f"SELECT count(*), sum(row_index) FROM '{output}/*.parquet'").fetchall()[0] == (
        2 * parts, sum(range(2 * parts)))
    frame = pl.scan_parquet(f"{output}/*.parquet").select(pl.len(), pl.col("row_index").max()).collect()
    assert frame.row(0) == (2 * parts, 2 * parts - 1)
    assert time.perf_counter() - began < 60


@pytest.mark.slow  # a moto S3 server
def test_compact_on_s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """On object storage the staged parts are copied into place (one object each) and removed."""
    bucket = request.getfixturevalue("s3_bucket")
    output = f"s3://{bucket}/runs/job"
    layout = OutputLayout(output)
    for shard in range(12):
        table = pa.table({"row_index": pa.array([shard], pa.int64())})
        layout.commit(shard, table, {"rows": 1, "errors": 0, "seconds": 0.01})
    monkeypatch.setattr(OutputLayout, "read_manifest", lambda self: _FakeManifest())
    layout.mark_complete({"rows": 12})
    done = compact(output, target_bytes=10**9)
    assert (done.parts_before, done.parts_after) == (12, 1)
    names = layout.storage.list()
    assert [n for n in names if n.endswith(".parquet")] == ["part-00000.parquet"]
    assert layout.storage.list("_batchformers", "compact") == []
    with layout.storage.open("part-00000.parquet") as handle:
        assert pq.read_table(handle).column("row_index").to_pylist() == list(range(12))


class _FakeManifest:
    """Just what compact reads of a manifest."""

    job_id = "tokenize-s3"
    shards = list(range(12))
    total_rows = 12
