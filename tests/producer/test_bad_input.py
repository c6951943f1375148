"""Bad job-level input: each case gives a clear error naming the file or shard, and never hangs the job.

Problems visible at submit are refused by ``batchformers submit`` (exit 2, the message on
stderr); problems that appear later (a file removed, changed or corrupted after submit, a
model no worker can load) fail the affected shards at their first attempt (permanent
errors are not retried) and show in ``batchformers status``; the other shards complete.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from jobs.dispatch import enqueue, messages_for, time_limits
from jobs.io.layout import OutputLayout
from jobs.settings import Settings
from producer.broker import sending_app
from producer.cli import main
from producer.embedded import LocalWorkers
from producer.submit import prepare
from producer.watch import wait
from tests.models import tiny_model_path
from tests.reliability import read_back, tokenize_spec, write_rows

pytestmark = pytest.mark.slow


def _two_files(tmp_path: Path) -> Path:
    """An input directory of a.parquet (rows r0-r9) and b.parquet (r10-r19)."""
    write_rows(tmp_path / "in" / "a.parquet", 10)
    write_rows(tmp_path / "in" / "b.parquet", 10, first=10)
    return tmp_path / "in"


# -- refused at submit ---------------------------------------------------------------------------------


def _missing(tmp_path: Path) -> tuple[Path, str]:
    return tmp_path / "nowhere.parquet", f"input: input '{tmp_path / 'nowhere.parquet'}' does not exist"


def _corrupt(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "in" / "b.parquet"
    _two_files(tmp_path)
    path.write_bytes(b"PAR1 this is not parquet at all PAR1")
    return tmp_path / "in", f"input: cannot read {path}"


def _column_missing_in_one_file(tmp_path: Path) -> tuple[Path, str]:
    source = _two_files(tmp_path)
    pq.write_table(pa.table({"id": ["x"], "body": ["renamed column"]}), source / "b.parquet")
    return source, f"columns.text: column 'text' is not in {source / 'b.parquet'}; its columns are: id, body"


def _empty(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), path)
    return path, "has no rows; there is nothing to do"


@pytest.mark.parametrize("case", [_missing, _corrupt, _column_missing_in_one_file, _empty],
                         ids=["missing", "corrupt", "column-missing-in-one-file", "empty"])
def test_refused_at_submit(case: Callable[[Path], tuple[Path, str]], tmp_path: Path, settings: Settings,
                           capsys: pytest.CaptureFixture[str]) -> None:
    source, expected = case(tmp_path)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"task": "tokenize", "model": str(tiny_model_path("bert-ner")),
                                   "input": str(source), "columns": {"id": "id"},
                                   "output": str(tmp_path / "out")}))
    code = main(["submit", str(job), "--broker", settings.broker_url])
    error = capsys.readouterr().err
    assert code == 2 and expected in error, error
    assert not (tmp_path / "out").exists()  # nothing written, nothing enqueued


# -- found by the worker -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_input_workers(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One worker shared by the cases below (starting one per case would cost more than the cases)."""
    settings = Settings(broker_url=redis_url, queue=f"bf-test-{uuid.uuid4().hex[:8]}", lease_seconds=5)
    env = {"BATCHFORMERS_LEASE_SECONDS": "5", "BATCHFORMERS_TORCH_THREADS": "1"}
    workers = LocalWorkers(redis_url, count=1, queue=settings.queue, log_dir=str(tmp_path_factory.mktemp("logs")),
                           extra_env=env).start()
    try:
        yield settings
    finally:  # killed, not stopped warm (~1.7 s joining its pool): its cases are over
        workers.kill()


def _removed(source: Path) -> str:
    (source / "b.parquet").unlink()
    return f"input file {source / 'b.parquet'} (rows N-N) is gone since the job was submitted"


def _changed(source: Path) -> str:
    write_rows(source / "b.parquet", 12, first=10)
    return f"input file {source / 'b.parquet'} changed since the job was submitted (size "


def _corrupted_in_place(source: Path) -> str:
    """Same size and modification time, so only reading it can tell."""
    path = source / "b.parquet"
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-60:-8] = b"\xff" * 52  # the footer's metadata
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return f"cannot read rows N-N of {path}: Couldn't deserialize thrift"


def _broken_model(tmp_path: Path) -> Path:
    """A model directory that pins at submit (its files are fingerprinted) but has no tokenizer to load."""
    directory = tmp_path / "broken-model"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text('{"model_type": "no-such-architecture"}')
    return directory


CHANGES: dict[str, tuple[Callable[[Path], str], dict[str, Any], set[int]]] = {
    # name: (what happens after submit, spec fields, shards that must fail)
    "file-removed": (_removed, {}, {2, 3}),
    "file-changed": (_changed, {}, {2, 3}),
    "file-corrupted": (_corrupted_in_place, {}, {2, 3}),
    "model-cannot-load": (lambda source: f"cannot load tokenizer '{_broken_model(source.parent)}'",
                          {"model": _broken_model}, {0, 1, 2, 3}),
    "remote-code-not-allowed": (lambda source: "BATCHFORMERS_ALLOW_TRUST_REMOTE_CODE=1",
                                {"trust_remote_code": True}, {0, 1, 2, 3}),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_failed_by_the_worker_with_a_clear_error(name: str, tmp_path: Path, bad_input_workers: Settings,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    change, fields, failing = CHANGES[name]
    source = _two_files(tmp_path)
    fields = {key: str(value(tmp_path)) if callable(value) else value for key, value in fields.items()}
    spec = tokenize_spec(source, tmp_path / "out", max_retries=3, **fields)  # 4 shards, 2 per file
    manifest, layout = prepare(spec, bad_input_workers)  # what submit does: plan, write the manifest...
    expected = change(source)  # ...then the world changes before a worker gets the shards
    enqueue(messages_for(manifest, layout), bad_input_workers, sending_app(bad_input_workers),
            limits=time_limits(spec, bad_input_workers))

    status = wait(layout.location, timeout=60)
    assert status.state == "failed", status
    assert set(status.failures) == failing
    assert all(expected in _rows_hidden(error) for error in status.failures.values()), status.failures
    failed = OutputLayout(layout.location).failed()
    assert all(failed[shard]["attempts"] == 1 for shard in failing)  # permanent: not retried
    done = {0, 1, 2, 3} - failing
    assert status.committed == len(done)
    if done:
        assert sorted(read_back(layout.location).column("id").to_pylist()) == [f"r{i}" for i in range(10)]

    code = main(["status", layout.location, "--json", "--broker", bad_input_workers.broker_url])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0 and shown["state"] == "failed"
    assert all(expected in _rows_hidden(shown["failures"][str(shard)]) for shard in failing)


def _rows_hidden(error: str) -> str:
    """The message with its row range (which differs per shard) as N-N."""
    return re.sub(r"rows \d+-\d+", "rows N-N", error)
