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
from producer.status import wait
from producer.submit import submit

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
                                 settings: Settings, start_workers: Any) -> None:
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
