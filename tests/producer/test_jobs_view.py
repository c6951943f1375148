"""``batchformers jobs`` (issue 14): every job the broker knows, and its ids work with status, cancel, retry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis

from jobs.io.layout import OutputLayout
from jobs.pinning import pin_of
from jobs.settings import Settings
from producer.cli import main
from producer.job_index import remember
from producer.jobs_view import job_lines
from producer.submit import submit
from tests.reliability import queue_lists, queued_messages, tokenize_spec, write_rows


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_jobs_lists_every_job_and_its_ids_work_elsewhere(tmp_path: Path, settings: Settings,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFORMERS_QUEUE", settings.queue)  # retry enqueues on this test's queue
    write_rows(tmp_path / "a.parquet", 10)
    write_rows(tmp_path / "b.parquet", 15)
    first = submit(tokenize_spec(tmp_path / "a.parquet", tmp_path / "out-a"), settings)
    second = submit(tokenize_spec(tmp_path / "b.parquet", tmp_path / "out-b"), settings)
    gone = submit(tokenize_spec(tmp_path / "b.parquet", tmp_path / "out-gone", shard_rows=4), settings)
    layout = OutputLayout(first.output)
    layout.mark_failed(1, "boom", attempts=4)
    shutil.rmtree(gone.output)

    broker = settings.broker_url
    listed = {line["job_id"]: line for line in _cli_json(capsys, "jobs", "--broker", broker, "--json")}  # type: ignore[union-attr]
    assert {first.job_id, second.job_id, gone.job_id} <= set(listed)
    a, b = listed[first.job_id], listed[second.job_id]
    assert (a["state"], a["shards"], a["committed"], a["failed"], a["priority"]) == ("running", 2, 0, 1, 5)
    assert (b["state"], b["shards"], b["rows"], b["output"]) == ("queued", 3, 15, second.output)
    pin = pin_of(OutputLayout(second.output).read_manifest())
    assert pin is not None and b["model"] == pin.label()
    assert listed[gone.job_id]["state"] == "unreadable" and "no batchformers job" in listed[gone.job_id]["note"]
    order = [job for job in listed if job in {first.job_id, second.job_id, gone.job_id}]
    assert order == [gone.job_id, second.job_id, first.job_id]  # newest first

    assert main(["jobs", "--broker", broker]) == 0  # the table
    table = capsys.readouterr().out
    row = next((line for line in table.splitlines() if first.job_id in line), "")
    assert "1/2" not in row and "0/2 (1 failed)" in row, table

    status = _cli_json(capsys, "status", first.job_id, "--broker", broker, "--json")
    assert status["job_id"] == first.job_id and status["failed"] == 1  # type: ignore[index]
    client = redis.Redis.from_url(broker)
    before = len(queued_messages(broker, settings.queue))
    assert main(["retry", first.job_id, "--broker", broker]) == 0
    assert len(queued_messages(broker, settings.queue)) == before + 1 and not layout.failed()
    assert main(["cancel", second.job_id, "--broker", broker]) == 0
    listed = {line["job_id"]: line for line in _cli_json(capsys, "jobs", "--broker", broker, "--json")}  # type: ignore[union-attr]
    assert listed[second.job_id]["state"] == "cancelled" and listed[first.job_id]["state"] == "queued"
    client.delete(*queue_lists(broker, settings.queue))


def test_a_job_with_rows_done_shows_its_rate_and_eta(tmp_path: Path, settings: Settings) -> None:
    import pyarrow as pa

    from producer.jobs_view import job_lines

    write_rows(tmp_path / "in.parquet", 20)
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)
    layout = OutputLayout(submission.output)
    layout.commit(0, pa.table({"x": list(range(5))}), {"rows": 5, "errors": 0, "seconds": 1.0})
    line = next(line for line in job_lines(settings) if line.job_id == submission.job_id)
    assert line.state == "running" and line.rows_done == 5 and line.committed == 1
    assert line.rows_per_second and line.eta_seconds == pytest.approx(15 / line.rows_per_second)
    redis.Redis.from_url(settings.broker_url).delete(*queue_lists(settings.broker_url, settings.queue))


def test_a_job_on_a_store_it_cannot_read_does_not_hide_the_others(tmp_path: Path, settings: Settings,
                                                                   refused_port: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An s3:// output without credentials raises botocore's NoCredentialsError, not an OSError."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{refused_port}")
    write_rows(tmp_path / "in.parquet", 5)
    local = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)
    remember(settings, "tokenize-0000s3", "s3://batchformers-no-such-bucket/out")
    try:
        listed = {line.job_id: line for line in job_lines(settings)}
        assert listed["tokenize-0000s3"].state == "unreadable" and listed["tokenize-0000s3"].note
        assert listed[local.job_id].state == "queued"
    finally:
        redis.Redis.from_url(settings.broker_url).delete(*queue_lists(settings.broker_url, settings.queue))
