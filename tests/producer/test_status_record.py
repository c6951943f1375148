"""The job's status record on the broker: ``status`` from it and the ledger, equal to ``status`` from the output.

Each state is built as the commands and workers build it (submit, a commit counted on the ledger,
``cancel``, a failure, ``run``'s interruption), then read both ways; the record's way is read with
the output's manifest moved aside, so a read of the output would fail it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis

from jobs.io.completion import complete_if_last
from jobs.io.layout import MANIFEST_FILE, META_DIR, OutputLayout
from jobs.ledger import Ledger
from jobs.manifest import Manifest
from jobs.protocol import LEASE_PREFIX, lease_key, status_record_key
from jobs.settings import Settings
from jobs.spec import load_spec
from jobs.status_record import StatusRecord, decode, encode, mirror, read, record_of, write
from producer.api import cancel
from producer.interruption import INTERRUPTED_FILE, RUN_FILE, mark_interrupted
from producer.job_index import LOCAL_MANIFEST
from producer.status import JobStatus, job_status, status
from producer.submit import Submission, submit
from tests import test_s3
from tests.reliability import queue_lists

ROOT = Path(__file__).resolve().parents[2]
STORAGE_LIBRARIES = {"fsspec", "s3fs", "botocore", "aiobotocore", "aiohttp", "boto3"}
s3_endpoint, s3_env, s3_bucket = test_s3.s3_endpoint, test_s3.s3_env, test_s3.bucket  # the moto S3 fixtures


def _spec(news_parquet: Path, ner_model: Path, output: str, **extra: Any) -> Any:
    return load_spec({"task": "tokenize", "model": str(ner_model), "input": str(news_parquet),
                      "columns": {"text": "body"}, "output": output, "shard_rows": 10, **extra})


@pytest.fixture
def job(tmp_path: Path, news_parquet: Path, ner_model: Path, settings: Settings) -> Iterator[Submission]:
    """A 7-shard job (66 rows) enqueued with no worker to run it; its queue and leases go afterwards."""
    submitted = submit(_spec(news_parquet, ner_model, str(tmp_path / "out")), settings)
    yield submitted
    _clean(settings, submitted.job_id)


def _clean(settings: Settings, job_id: str) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    client.delete(*queue_lists(settings.broker_url, settings.queue))
    for key in client.scan_iter(match=f"{LEASE_PREFIX}{job_id}*"):
        client.delete(key)


def _ledger(settings: Settings, layout: OutputLayout) -> tuple[Manifest, Ledger]:
    manifest = layout.read_manifest()
    return manifest, Ledger.for_manifest(redis.Redis.from_url(settings.broker_url), manifest)


def _commit(settings: Settings, layout: OutputLayout, shard: int, errors: int = 1) -> None:
    """What a worker does: the part and its marker, then the count on the ledger (the last writes _SUCCESS)."""
    manifest, ledger = _ledger(settings, layout)
    rows = manifest.shards[shard].rows
    table = pa.table({"x": list(range(rows)), "error": [f"bad row {shard}"] * errors + [None] * (rows - errors)})
    layout.commit(shard, table, {"rows": rows, "errors": errors, "seconds": 0.5})
    complete_if_last(layout, manifest, shard, layout.read_committed([shard])[shard], ledger)


def _both_ways(settings: Settings, submitted: Submission) -> tuple[JobStatus, JobStatus]:
    """(from the output, from the record), the record's with the output's manifest moved aside."""
    from_output = job_status(submitted.output, settings)
    manifest = Path(submitted.output) / MANIFEST_FILE
    manifest.rename(manifest.with_suffix(".aside"))
    try:
        from_record = status(submitted.job_id, settings)
    finally:
        manifest.with_suffix(".aside").rename(manifest)
    return from_output, from_record


def _assert_same(from_output: JobStatus, from_record: JobStatus) -> None:
    one, other = asdict(from_output), asdict(from_record)
    assert abs(one.pop("elapsed_seconds") - other.pop("elapsed_seconds")) < 5  # "now" moved on between them
    assert one == other


def test_queued_running_and_complete_read_the_same_from_the_record(job: Submission, settings: Settings) -> None:
    layout = OutputLayout(job.output)
    queued = job_status(job.output, settings, job_id=job.job_id)  # no ledger before a first commit: the output
    assert queued.state == "queued" and queued.source == "markers"
    _, ledger = _ledger(settings, layout)
    ledger.rebuild([])  # as the first commit does
    from_output, from_record = _both_ways(settings, job)
    assert from_record.state == "queued" and from_record.source == "ledger"
    _assert_same(from_output, from_record)

    _commit(settings, layout, 0)
    ledger.started(2)
    redis.Redis.from_url(settings.broker_url).set(lease_key(job.job_id, 2), "worker-a", ex=60)
    ledger.started(3)  # a worker that died: its entry stays, its lease is gone
    from_output, from_record = _both_ways(settings, job)
    assert (from_record.state, from_record.committed, from_record.running_shards) == ("running", 1, [2])
    _assert_same(from_output, from_record)

    for shard in range(1, 7):
        _commit(settings, layout, shard)
    from_output, from_record = _both_ways(settings, job)
    assert from_record.state == "complete" and from_record.rows_done == 66 and from_record.row_errors == 7
    _assert_same(from_output, from_record)
    ttl = redis.Redis.from_url(settings.broker_url).ttl(status_record_key(job.job_id))
    assert 0 < ttl <= settings.retention_seconds + 1  # a finished job's record goes with its ledger


def test_cancelled_failed_and_interrupted_read_the_same_from_the_record(job: Submission, settings: Settings) -> None:
    layout = OutputLayout(job.output)
    _commit(settings, layout, 0)
    cancel(job.job_id, settings)
    from_output, from_record = _both_ways(settings, job)
    assert from_record.state == "cancelled"
    _assert_same(from_output, from_record)

    cancel(job.output, settings)  # by its output: the same flag
    assert read(redis.Redis.from_url(settings.broker_url), job.job_id).cancelled  # type: ignore[union-attr]

    resubmitted = submit(load_spec(layout.read_manifest().spec), settings)  # a resubmit lifts the cancel
    assert resubmitted.job_id == job.job_id
    record = read(redis.Redis.from_url(settings.broker_url), job.job_id)
    assert record is not None and not record.cancelled
    assert status(job.job_id, settings).state == "running"

    marker = mark_interrupted(layout, "batchformers run was stopped by SIGTERM")
    assert mirror(settings.broker_url, job.job_id, "interrupted", marker)
    from_output, from_record = _both_ways(settings, job)
    assert from_record.state == "interrupted" and "SIGTERM" in from_record.note
    _assert_same(from_output, from_record)

    layout.storage.remove(INTERRUPTED_FILE)
    mirror(settings.broker_url, job.job_id, "interrupted", None)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    run = {"pid": int(gone.stdout), "host": socket.gethostname(), "started_at": 0.0}  # a run that was killed
    layout.storage.write_atomic(json.dumps(run).encode(), RUN_FILE)
    mirror(settings.broker_url, job.job_id, "run", run)
    from_output, from_record = _both_ways(settings, job)
    assert from_record.state == "interrupted" and "killed?" in from_record.note
    _assert_same(from_output, from_record)
    layout.storage.remove(RUN_FILE)
    mirror(settings.broker_url, job.job_id, "run", None)

    _, ledger = _ledger(settings, layout)
    for shard in range(1, 6):
        _commit(settings, layout, shard)
    layout.mark_failed(6, "ModelLoadError: cannot load model 'nope'", attempts=3)
    ledger.record_failure(6, "ModelLoadError: cannot load model 'nope'")  # as the worker records it
    from_output, from_record = _both_ways(settings, job)
    assert from_record.state == "failed" and from_record.failures == {6: "ModelLoadError: cannot load model 'nope'"}
    _assert_same(from_output, from_record)


def test_a_job_failed_by_its_row_errors_reads_the_same(tmp_path: Path, news_parquet: Path, ner_model: Path,
                                                       settings: Settings) -> None:
    submitted = submit(_spec(news_parquet, ner_model, str(tmp_path / "out"), max_error_rate=0.1), settings)
    layout = OutputLayout(submitted.output)
    for shard in range(7):
        _commit(settings, layout, shard, errors=layout.read_manifest().shards[shard].rows)
    assert layout.is_finished()
    from_output, from_record = _both_ways(settings, submitted)  # first_errors: read from the parts, both ways
    assert from_record.state == "failed" and from_record.first_errors == ["bad row 0", "bad row 1", "bad row 2"]
    _assert_same(from_output, from_record)
    _clean(settings, submitted.job_id)


def test_a_bad_record_or_one_of_another_job_is_not_used(job: Submission, settings: Settings) -> None:
    layout = OutputLayout(job.output)
    _commit(settings, layout, 0)
    client = redis.Redis.from_url(settings.broker_url)
    key = status_record_key(job.job_id)
    good = read(client, job.job_id)
    assert good is not None and good.task == "tokenize"
    assert good.shard_rows == [shard.rows for shard in layout.read_manifest().shards]
    expected = job_status(job.output, settings)
    lying = StatusRecord(**{**asdict(good), "task": "lies", "cancelled": True})

    bad: list[dict[str, str]] = [
        {"facts": "{not json"},
        {**encode(lying), "facts": encode(lying)["facts"].replace('"v":1', '"v":99')},
        encode(StatusRecord(**{**asdict(lying), "job_id": "tokenize-someoneelse"})),  # another job's record
        encode(StatusRecord(**{**asdict(lying), "output": "/elsewhere"})),  # a record of the job elsewhere
        {**encode(lying), "interrupted": "[1, 2]"},
        {**encode(lying), "facts": json.dumps({**json.loads(encode(lying)["facts"]), "rows": "many"})},
        {**encode(lying), "facts": json.dumps({**json.loads(encode(lying)["facts"]), "rows": [[10, -3]]})},
    ]
    for fields in bad:
        client.delete(key)
        client.hset(key, mapping=fields)  # type: ignore[arg-type]
        _assert_same(expected, status(job.job_id, settings))
    client.delete(key)
    client.set(key, "a string, not a hash")  # WRONGTYPE for the record's read: the output, broker reachable
    found = status(job.job_id, settings)
    assert found.broker == "reachable"
    _assert_same(expected, found)
    client.delete(key)
    assert not mirror(settings.broker_url, job.job_id, "cancelled", True)  # no record: no flag-only key
    assert not client.exists(key)
    write(client, good)
    assert decode(client.hgetall(key)) == good


def test_an_unreachable_broker_reads_the_output(job: Submission, settings: Settings, refused_port: int) -> None:
    OutputLayout(job.output).commit(0, pa.table({"x": list(range(10))}), {"rows": 10, "errors": 0, "seconds": 0.1})
    away = Settings(broker_url=f"redis://127.0.0.1:{refused_port}/0")
    found = job_status(job.output, away, job_id=job.job_id)
    assert found.broker.startswith("unreachable") and found.committed == 1 and found.state == "interrupted"


def test_a_replaced_job_s_record_is_forgotten(tmp_path: Path, news_parquet: Path, ner_model: Path,
                                              settings: Settings) -> None:
    output = str(tmp_path / "out")
    first = submit(_spec(news_parquet, ner_model, output), settings)
    layout = OutputLayout(output)
    for shard in range(7):
        layout.mark_failed(shard, "boom", attempts=3)  # abandoned: another job may take the output
    second = submit(_spec(news_parquet, ner_model, output, shard_rows=20), settings)
    assert second.job_id != first.job_id
    client = redis.Redis.from_url(settings.broker_url)
    assert read(client, first.job_id) is None and read(client, second.job_id) is not None
    assert status(first.job_id, settings).job_id == second.job_id  # the output's job, as before
    _clean(settings, second.job_id)


def test_the_light_lookups_name_the_layout_s_files() -> None:
    assert LOCAL_MANIFEST == MANIFEST_FILE
    assert INTERRUPTED_FILE.startswith(META_DIR + "/") and RUN_FILE.startswith(META_DIR + "/")


def test_a_record_of_5000_shards_is_small(job: Submission) -> None:
    manifest = OutputLayout(job.output).read_manifest()
    from jobs.manifest import ShardPlan

    many = [ShardPlan(i, 0, i * 10, i * 10 + 10) for i in range(4999)] + [ShardPlan(4999, 0, 49990, 49996)]
    record = record_of(Manifest(**{**manifest.__dict__, "shards": many}), job.output)
    assert sum(len(value) for value in encode(record).values()) < 1000
    assert decode(encode(record)) == record


RUN = """
import json, sys
from producer.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as handle:
    json.dump({"code": code, "modules": sorted(sys.modules)}, handle)
"""


def _fresh(settings: Settings, tmp_path: Path, env: dict[str, str], *argv: str) -> tuple[set[str], str]:
    report = tmp_path / "modules.json"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")}, **env,
           "BATCHFORMERS_BROKER_URL": settings.broker_url, "BATCHFORMERS_QUEUE": settings.queue}
    done = subprocess.run([sys.executable, "-c", RUN, str(report), *argv], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    assert result["code"] in (0, None), done.stderr
    return {name.partition(".")[0] for name in result["modules"]}, done.stdout


@pytest.mark.slow  # a moto S3 server and fresh interpreters
def test_status_and_jobs_of_a_job_on_s3_import_no_storage_library(s3_bucket: str, s3_env: dict[str, str],
                                                                   news_parquet: Path, ner_model: Path,
                                                                   settings: Settings, tmp_path: Path) -> None:
    submitted = submit(_spec(news_parquet, ner_model, f"s3://{s3_bucket}/out"), settings)
    layout = OutputLayout(submitted.output)
    _commit(settings, layout, 0)
    expected = job_status(submitted.output, settings)
    for argv in (["status", submitted.job_id, "--json"], ["status", submitted.output, "--json"]):
        imported, printed = _fresh(settings, tmp_path, s3_env, *argv)
        assert STORAGE_LIBRARIES & imported == set(), argv
        shown = json.loads(printed)
        assert (shown["state"], shown["committed"], shown["rows_done"]) == ("running", 1, 10)
        assert {k: v for k, v in shown.items() if k not in ("elapsed_seconds", "failures")} == {
            k: v for k, v in expected.to_dict().items() if k not in ("elapsed_seconds", "failures")}
    imported, printed = _fresh(settings, tmp_path, s3_env, "jobs", "--json", "--limit", "1")
    assert STORAGE_LIBRARIES & imported == set()
    assert any(line["job_id"] == submitted.job_id and line["committed"] == 1 for line in json.loads(printed))
    _clean(settings, submitted.job_id)


@pytest.mark.slow  # a real worker process
def test_a_worker_mirrors_a_cancel_the_broker_missed(job: Submission, settings: Settings, start_workers: Any) -> None:
    """A cancel written while the broker was down (only the output's CANCELLED): the worker that skips
    the job's shards for it sets the record's flag, so status by the record says cancelled too."""
    import time

    OutputLayout(job.output).cancel()
    client = redis.Redis.from_url(settings.broker_url)
    assert not read(client, job.job_id).cancelled  # type: ignore[union-attr]
    start_workers(1)
    deadline = time.monotonic() + 120
    while not read(client, job.job_id).cancelled:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no worker mirrored the cancel"
        time.sleep(0.5)
    _, ledger = _ledger(settings, OutputLayout(job.output))
    ledger.rebuild([])
    from_output, from_record = _both_ways(settings, job)
    assert from_record.state == "cancelled"
    _assert_same(from_output, from_record)


def test_status_by_id_of_a_local_job_imports_no_storage_library(job: Submission, settings: Settings,
                                                                tmp_path: Path) -> None:
    _commit(settings, OutputLayout(job.output), 0)
    imported, printed = _fresh(settings, tmp_path, {}, "status", job.job_id, "--json")
    assert STORAGE_LIBRARIES & imported == set()
    assert json.loads(printed)["committed"] == 1
