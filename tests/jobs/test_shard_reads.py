"""A shard reads only its rows: Arrow files by record batch, Parquet shards along row groups,
and submit's warning where a file's layout makes every shard read much more than its rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from jobs.io.readers.ipc_index import batch_rows
from jobs.io.sources import probe, read_rows
from jobs.io.storage import Storage
from jobs.spec import load_spec
from producer.plan import build_manifest
from producer.submit import prepare_with_warnings
from tests.models import tiny_model_path

ROOT = Path(__file__).resolve().parents[2]


def _table(rows: int, width: int = 1) -> pa.Table:
    return pa.table({"id": list(range(rows)), "text": [f"row {i} " * width for i in range(rows)]})


def _spec(path: Path, output: Path, shard_rows: int) -> object:
    return load_spec({"task": "tokenize", "model": str(tiny_model_path("bert-ner")), "input": str(path),
                      "columns": {"text": "text", "id": "id"}, "output": str(output), "shard_rows": shard_rows})


def test_batch_rows_come_from_the_headers_as_pyarrow_counts_them(tmp_path: Path) -> None:
    table = _table(1000)
    path = tmp_path / "batches.arrow"
    with ipc.new_file(str(path), table.schema) as writer:
        for start, length in ((0, 0), (0, 5), (5, 300), (305, 1), (306, 694)):
            writer.write_table(table.slice(start, length))
    legacy = tmp_path / "legacy.arrow"
    with ipc.new_file(str(legacy), table.schema, options=ipc.IpcWriteOptions(use_legacy_format=True)) as writer:
        writer.write_table(table, max_chunksize=300)
    for file in (path, legacy):
        reader = ipc.open_file(str(file))
        expected = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
        assert batch_rows(Storage.at(str(file)), str(file)) == expected


@pytest.mark.parametrize("kind", ["arrow_file", "arrow_stream", "parquet"])
def test_any_range_reads_exactly_its_rows_in_order(tmp_path: Path, kind: str) -> None:
    table = _table(500)
    path = tmp_path / f"data.{kind}"
    if kind == "parquet":
        pq.write_table(table, path, row_group_size=37)
    elif kind == "arrow_file":
        feather.write_feather(table, path, compression="uncompressed", chunksize=37)
    else:
        with pa.OSFile(str(path), "wb") as sink, ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=37)
    storage = Storage.at(str(path))
    source = probe(storage, storage.root, "parquet" if kind == "parquet" else "arrow")
    assert source.format == kind
    for start, stop in ((0, 1), (0, 37), (36, 38), (37, 74), (100, 333), (499, 500), (0, 500)):
        got = read_rows(source, start, stop, ["text", "id"])
        assert got.column_names == ["text", "id"]
        assert got.column("id").to_pylist() == list(range(start, stop))


def test_parquet_shards_follow_row_groups_and_hold_every_row_once(tmp_path: Path) -> None:
    """Row groups of 1,100 rows and shard_rows 1,000: cut every 1,000 rows, every other shard would
    span two groups (2,200 rows decoded for 1,000); such a cut moves to the group boundary."""
    path = tmp_path / "groups.parquet"
    pq.write_table(_table(11_000), path, row_group_size=1_100)
    manifest = build_manifest(_spec(path, tmp_path / "out", 1_000))  # type: ignore[arg-type]
    boundaries = list(range(0, 11_001, 1_100))

    def decoded(start: int, stop: int) -> int:
        return min(b for b in boundaries if b >= stop) - max(b for b in boundaries if b <= start)

    assert all(decoded(s.start, s.stop) <= 2 * s.rows for s in manifest.shards)
    assert any(s.stop % 1_000 for s in manifest.shards) and all(750 <= s.rows <= 1_250 for s in manifest.shards)
    ids = [i for shard in manifest.shards
           for i in read_rows(manifest.sources[0], shard.start, shard.stop, ["id"]).column("id").to_pylist()]
    assert ids == list(range(11_000))
    again = build_manifest(_spec(path, tmp_path / "out", 1_000))  # type: ignore[arg-type]
    assert again.shards == manifest.shards and again.job_id == manifest.job_id


def test_a_row_group_ten_times_shard_rows_is_warned_with_its_factor(tmp_path: Path) -> None:
    path = tmp_path / "one-group.parquet"
    rows = 2_000
    pq.write_table(_table(rows, width=200), path, row_group_size=rows, compression="none")
    manifest, _, warnings = prepare_with_warnings(_spec(path, tmp_path / "out", rows // 10))  # type: ignore[arg-type]
    assert len(manifest.shards) == 10
    assert len(warnings) == 1 and "10.0x" in warnings[0] and str(path) in warnings[0]

    fine = tmp_path / "groups.parquet"
    pq.write_table(_table(rows, width=200), fine, row_group_size=rows // 10, compression="none")
    assert prepare_with_warnings(_spec(fine, tmp_path / "out-fine", rows // 10))[2] == []  # type: ignore[arg-type]


def test_planning_a_parquet_job_imports_no_pandas(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(_table(50), path)
    code = ("import sys; from producer.plan import build_manifest; from jobs.spec import load_spec; "
            f"build_manifest(load_spec({{'task': 'tokenize', 'model': {str(tiny_model_path('bert-ner'))!r}, "
            f"'input': {str(path)!r}, 'columns': {{'text': 'text'}}, 'output': {str(tmp_path / 'out')!r}}})); "
            "print(sorted(m for m in ('pandas', 'datasets', 'torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
