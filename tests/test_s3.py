"""Object storage end to end: input and output on ``s3://``, served by a local moto S3 server.

Endpoint and credentials reach every process through the standard ``AWS_*``
variables (which s3fs/botocore read), exactly as on a real deployment.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from jobs.io.storage import Storage
from jobs.settings import Settings
from jobs.spec import load_spec
from producer.submit import submit
from producer.watch import wait

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the OS picks a free port
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """AWS_* variables pointing at the moto server, set here and handed to workers."""
    import s3fs

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL": s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield env
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def bucket(s3_env: dict[str, str]) -> str:
    import boto3

    name = f"bf-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def _keys(bucket: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def test_storage_sees_other_writers_and_creates_once(bucket: str) -> None:
    import boto3

    storage = Storage.at(f"s3://{bucket}/job")
    assert storage.remote and storage.url("a.json") == f"s3://{bucket}/job/a.json"
    storage.write_atomic(b"{}", "_batchformers", "shards", "00000.json")
    assert storage.list("_batchformers", "shards") == ["00000.json"]
    # Written by another process: the listing cache must not hide it.
    boto3.client("s3").put_object(Bucket=bucket, Key="job/_batchformers/shards/00001.json", Body=b"{}")
    assert storage.list("_batchformers", "shards") == ["00000.json", "00001.json"]
    assert storage.exists("_batchformers", "shards", "00001.json")
    # _SUCCESS is a conditional put: exactly one caller creates it.
    assert storage.create_once(b"first", "_SUCCESS") is True
    assert storage.create_once(b"second", "_SUCCESS") is False
    assert storage.read_bytes("_SUCCESS") == b"first"
    storage.remove("_SUCCESS")
    assert not storage.exists("_SUCCESS")


def test_success_is_a_conditional_put_not_check_then_put(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two finishers that both looked before either wrote: a check-then-put lets both "create" it;
    only the store refusing the second put (If-None-Match) keeps it to one."""
    storage = Storage.at(f"s3://{bucket}/job")
    monkeypatch.setattr(Storage, "exists", lambda self, *parts: False)  # every check races the other writer
    assert storage.create_once(b"first", "_SUCCESS") is True
    assert storage.create_once(b"second", "_SUCCESS") is False
    assert storage.read_bytes("_SUCCESS") == b"first"


@pytest.mark.slow
def test_job_reads_and_writes_s3(bucket: str, s3_env: dict[str, str], news_parquet: Path, ner_model: Path,
                                 settings: Settings, start_workers: Any, tmp_path: Path) -> None:
    source = Storage.at(f"s3://{bucket}/input")
    source.write_atomic(news_parquet.read_bytes(), "news.parquet")
    output = f"s3://{bucket}/runs/ner"
    start_workers(2, **s3_env)
    spec = load_spec({"task": "ner", "model": str(ner_model), "input": f"s3://{bucket}/input/",
                      "columns": {"text": "body", "id": "doc_id"}, "output": output,
                      "params": {"aggregation_strategy": "simple"}, "shard_rows": 20})
    submission = submit(spec, settings)
    assert submission.shards == 4 and submission.output == output
    status = wait(output, timeout=150)
    assert status.state == "complete", status

    keys = [k for k in _keys(bucket) if k.startswith("runs/ner/")]
    names = [k.removeprefix("runs/ner/") for k in keys]
    assert sorted(n for n in names if not n.startswith("_")) == [f"part-{i:05d}.parquet" for i in range(4)]
    assert sorted(n for n in names if n.startswith("_batchformers/shards/")) == [
        f"_batchformers/shards/{i:05d}.json" for i in range(4)]
    assert "_batchformers/manifest.json" in names and "_batchformers/_SUCCESS" in names
    assert not [n for n in names if ".tmp" in n]  # no temporary objects left behind

    storage = Storage.at(output)
    table = pq.read_table(io.BytesIO(storage.read_bytes("part-00000.parquet")))
    assert table.column("doc_id").to_pylist() == [f"doc-{i}" for i in range(20)]
    rows = sum(pq.read_metadata(io.BytesIO(storage.read_bytes(f"part-{i:05d}.parquet"))).num_rows
               for i in range(4))
    assert rows == 66

    # Resubmitting the finished job over S3 enqueues nothing.
    again = submit(spec, settings)
    assert again.enqueued == 0 and again.already_committed == 4

    # `status` on the s3:// location, in a separate process that only has the AWS_* variables.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")}, **s3_env,
           "BATCHFORMERS_BROKER_URL": settings.broker_url}
    done = subprocess.run([sys.executable, "-m", "producer.cli", "status", output, "--json"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    reported = json.loads(done.stdout)
    assert reported["state"] == "complete" and reported["rows_done"] == 66 and reported["committed"] == 4

    # `report` reads the s3:// output (markers, parts' errors) and the s3:// input (the stragglers' rows).
    from producer.report import write_report

    written = write_report(output, out=str(tmp_path / "report.html"))
    totals = written.data.totals()
    assert (totals["rows"], totals["committed"], totals["errors"]) == (66, 4, 0)
    assert all(straggler.lengths for straggler in written.data.stragglers)


class _GetBytes:
    """Body bytes of the GetObject requests an s3fs filesystem makes (botocore's after-call event)."""

    def __init__(self, fs: Any) -> None:
        fs.connect()
        self.events, self.bytes = fs.s3.meta.events, 0
        self.events.register("after-call.s3.GetObject", self._count)

    def _count(self, parsed: dict[str, Any] | None = None, **_: Any) -> None:
        self.bytes += int((parsed or {}).get("ContentLength") or 0)

    def close(self) -> None:
        self.events.unregister("after-call.s3.GetObject", self._count)


def test_a_shard_of_an_arrow_file_fetches_only_its_record_batches(bucket: str) -> None:
    import pyarrow as pa
    import pyarrow.feather as feather

    from jobs.io.sources import probe, read_rows

    rows, batch = 20_000, 1_000
    table = pa.table({"id": list(range(rows)), "text": [f"row {i} " * 10 for i in range(rows)]})
    buffer = io.BytesIO()
    feather.write_feather(table, buffer, compression="uncompressed", chunksize=batch)
    storage = Storage.at(f"s3://{bucket}/in/rows.arrow")
    storage.fs.pipe_file(storage.root, buffer.getvalue())
    counted = _GetBytes(storage.fs)
    try:
        source = probe(storage, storage.root)
        described = counted.bytes
        assert source.format == "arrow_file" and source.num_rows == rows
        assert described < source.size / 20  # footer and batch headers, not the batches
        counted.bytes = 0
        got = read_rows(source, 4_500, 6_500, ["id", "text"])  # overlaps batches 4, 5 and 6
        assert got.column("id").to_pylist() == list(range(4_500, 6_500))
        assert got.column("text").to_pylist() == table.column("text").to_pylist()[4_500:6_500]
        three_batches = source.size * 3 * batch / rows
        assert counted.bytes < three_batches * 1.1  # the file is 20 batches: the old read_all fetched all
    finally:
        counted.close()


def _parquet_bytes(ids: range, row_group_size: int) -> bytes:
    import pyarrow as pa

    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": list(ids), "text": [f"row {i} " * 10 for i in ids]}), buffer,
                   row_group_size=row_group_size)
    return buffer.getvalue()


def test_later_shards_of_a_parquet_file_skip_its_footer(bucket: str) -> None:
    """A worker reads a file's footer with its first shard and remembers it: a later shard of the same
    size fetches its row groups' column chunks alone, and the footer's bytes fewer."""
    from jobs.io.sources import forget_indexes, probe, read_rows

    rows, group = 20_000, 1_000
    data = _parquet_bytes(range(rows), group)
    storage = Storage.at(f"s3://{bucket}/in/rows.parquet")
    storage.fs.pipe_file(storage.root, data)
    source = probe(storage, storage.root)
    metadata = pq.read_metadata(io.BytesIO(data))
    footer = int.from_bytes(data[-8:-4], "little") + 8

    def chunks(groups: range) -> int:
        return sum(metadata.row_group(g).column(c).total_compressed_size for g in groups for c in range(2))

    forget_indexes()
    counted = _GetBytes(storage.fs)
    try:
        fetched = []
        for start in (2_000, 7_000):  # each shard exactly two row groups
            counted.bytes = 0
            got = read_rows(source, start, start + 2 * group, ["id", "text"])
            assert got.column("id").to_pylist() == list(range(start, start + 2 * group))
            fetched.append(counted.bytes)
    finally:
        counted.close()
    assert fetched[1] == chunks(range(7, 9))  # no footer, no read-ahead, no other group
    assert fetched[0] == chunks(range(2, 4)) + footer + 8  # the footer exactly, after the 8 bytes giving its length


def test_a_parquet_file_rewritten_under_its_url_is_read_as_it_is_now(bucket: str) -> None:
    """The remembered footer belongs to the file's version (size, time, rows: what the worker checks the
    file against), not to its url: the job resubmitted over the new file reads the new rows."""
    from jobs.errors import InputError
    from jobs.io.sources import check_source, probe, read_rows

    storage = Storage.at(f"s3://{bucket}/in/changing.parquet")
    storage.fs.pipe_file(storage.root, _parquet_bytes(range(3_000), 500))
    old = probe(storage, storage.root)
    assert read_rows(old, 1_000, 1_500, ["id"]).column("id").to_pylist() == list(range(1_000, 1_500))
    storage.fs.pipe_file(storage.root, _parquet_bytes(range(50_000, 54_000), 700))
    with pytest.raises(InputError, match="changed since the job was submitted"):
        check_source(old, 1_000, 1_500, Settings())
    new = probe(storage, storage.root)
    assert new != old
    assert read_rows(new, 1_000, 1_500, ["id"]).column("id").to_pylist() == list(range(51_000, 51_500))


def test_an_arrow_stream_on_s3_is_warned_at_submit(bucket: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from producer.submit import prepare_with_warnings
    from tests.models import tiny_model_path

    rows = 20_000
    table = pa.table({"id": list(range(rows)), "text": [f"row {i} " * 10 for i in range(rows)]})
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1_000)
    Storage.at(f"s3://{bucket}/in/rows.arrow").fs.pipe_file(f"{bucket}/in/rows.arrow", sink.getvalue().to_pybytes())
    spec = load_spec({"task": "tokenize", "model": str(tiny_model_path("bert-ner")),
                      "input": f"s3://{bucket}/in/rows.arrow", "columns": {"text": "text", "id": "id"},
                      "output": str(tmp_path / "out"), "shard_rows": 2_000})
    manifest, _, warnings = prepare_with_warnings(spec)
    assert manifest.sources[0].format == "arrow_stream" and len(manifest.shards) == 10
    assert len(warnings) == 1 and "Arrow stream" in warnings[0] and "5.5x" in warnings[0]  # (1+...+10)/10
