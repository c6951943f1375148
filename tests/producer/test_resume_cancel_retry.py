"""``batchformers cancel`` / ``submit`` (resume) / ``retry`` through the command line, with real workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.settings import Settings
from producer.cli import main
from producer.watch import wait
from tests.models import tiny_model_path
from tests.reliability import (
    assert_completed,
    assert_exactly_once,
    committed_markers,
    wait_drained,
    wait_until,
    write_rows,
)
from worker.faults import FAULTS_ENV

pytestmark = pytest.mark.slow


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The command line talks to this test's broker and queue."""
    monkeypatch.setenv("BATCHFORMERS_BROKER_URL", settings.broker_url)
    monkeypatch.setenv("BATCHFORMERS_QUEUE", settings.queue)
    return settings


def _job_file(tmp_path: Path, rows: int, **fields: Any) -> tuple[Path, list[str], Path]:
    ids = write_rows(tmp_path / "in.parquet", rows)
    job = tmp_path / "job.yaml"
    output = tmp_path / "out"
    job.write_text(yaml.safe_dump({"task": "tokenize", "model": str(tiny_model_path("bert-ner")),
                                   "input": str(tmp_path / "in.parquet"), "columns": {"id": "id"},
                                   "output": str(output), "shard_rows": 5, **fields}))
    return job, ids, output


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _status(capsys: pytest.CaptureFixture[str], job_id: str) -> dict[str, Any]:
    code, out, _ = _cli(capsys, "status", job_id, "--json")
    assert code == 0
    loaded: dict[str, Any] = json.loads(out)
    return loaded


def _part_times(output: Path) -> dict[str, int]:
    return {part.name: part.stat().st_mtime_ns for part in output.glob("part-*.parquet")}


def test_cancel_stops_new_shards_and_submit_resumes(tmp_path: Path, cli_env: Settings, start_workers: Any,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    job, ids, output = _job_file(tmp_path, 30)  # 6 shards
    start_workers(1, **{FAULTS_ENV: "sleep=1"})
    code, out, err = _cli(capsys, "submit", str(job))
    assert code == 0 and "6 of 6 shards enqueued" in err
    job_id = out.strip()

    wait_until(lambda: committed_markers(output), 60, "a first shard to commit")
    code, out, _ = _cli(capsys, "cancel", job_id)
    assert code == 0 and "cancelled" in out
    assert _status(capsys, job_id)["state"] == "cancelled"
    # The shard running at the cancel may finish; every other queued shard is dropped unstarted.
    # Drained: nothing queued, nothing delivered and unacked (a shard just taken but not yet
    # leased counts), nothing leased.
    wait_drained(cli_env.broker_url, cli_env.queue, job_id, timeout=30)
    stopped_at = len(committed_markers(output))
    assert stopped_at < 6
    status = _status(capsys, job_id)
    assert status["state"] == "cancelled" and status["committed"] == stopped_at
    before = _part_times(output)

    code, _, err = _cli(capsys, "submit", str(job))  # resume
    assert code == 0 and f"{6 - stopped_at} of 6 shards enqueued" in err
    assert wait(str(output), timeout=90).state == "complete"
    assert _status(capsys, job_id)["state"] == "complete"
    assert_exactly_once(output, ids)
    after = _part_times(output)
    assert all(after[name] == mtime for name, mtime in before.items())  # done shards were not redone
    assert_completed(output, len(ids))


def test_retry_reruns_only_failed_shards(tmp_path: Path, cli_env: Settings, start_workers: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    job, ids, output = _job_file(tmp_path, 20, max_retries=0)  # 4 shards
    broken = start_workers(1, **{FAULTS_ENV: "raise=2"})
    code, out, _ = _cli(capsys, "submit", str(job))
    job_id = out.strip()
    assert wait(str(output), timeout=60).state == "failed"
    status = _status(capsys, job_id)
    assert status["committed"] == 3 and status["failures"] == {
        "2": f"gave up after 1 attempt; last: InjectedFault: injected failure of shard 2 ({FAULTS_ENV})"}
    code, out, _ = _cli(capsys, "status", job_id)
    assert code == 0 and "InjectedFault" in out  # the human view shows why too
    before = _part_times(output)

    broken.stop()
    start_workers(1)  # the fault is gone
    code, out, _ = _cli(capsys, "retry", job_id)
    assert code == 0 and "re-enqueued 1 failed shard(s)" in out
    assert wait(str(output), timeout=60).state == "complete"
    assert_exactly_once(output, ids)
    assert committed_markers(output)[2]["attempt"] == 1  # a fresh count of attempts after `retry`
    after = _part_times(output)
    assert all(after[name] == mtime for name, mtime in before.items())  # only shard 2 ran again
    assert set(after) - set(before) == {"part-00002.parquet"}
    assert_completed(output, len(ids))

    code, _, err = _cli(capsys, "submit", str(job))  # and running the job again does nothing
    assert code == 0 and "0 of 4 shards enqueued" in err
    assert _part_times(output) == after
