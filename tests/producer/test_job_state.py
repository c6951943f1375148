"""What ``status`` calls a job: queued, interrupted, failed for its row errors; truncated rows counted.

Before issue 12 a job whose every row was an error ended "complete" (exit 0), a job
that nothing ran yet said "running", a job whose broker was gone said "running"
forever, and rows cut to the model's length were counted nowhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis

from jobs.engine.base import RunResult, RunStats
from jobs.io.layout import OutputLayout
from jobs.settings import Settings
from jobs.shard import run_shard
from jobs.spec import load_spec
from jobs.tasks.registry import get_task_class
from producer.cli import main
from producer.status import job_status
from producer.submit import Submission, prepare, submit
from tests.models import tiny_model_path


def _spec(tmp_path: Path, news_parquet: Path, **fields: Any) -> Any:
    raw = {"task": "tokenize", "model": str(tiny_model_path("bert-ner")), "input": str(news_parquet),
           "columns": {"text": "body"}, "output": str(tmp_path / "out"), "shard_rows": 33, **fields}
    return load_spec(raw)


@pytest.fixture
def submitted(tmp_path: Path, news_parquet: Path, settings: Settings) -> Iterator[Submission]:
    """A 2-shard job (33 rows each) enqueued with no worker to run it."""
    yield submit(_spec(tmp_path, news_parquet), settings)
    redis.Redis.from_url(settings.broker_url).delete(settings.queue)


def _commit(layout: OutputLayout, shard: int, errors: list[str | None]) -> None:
    table = pa.table({"row_index": list(range(len(errors))), "error": pa.array(errors, pa.string())})
    layout.commit(shard, table, {"rows": len(errors), "errors": sum(e is not None for e in errors), "seconds": 0.1})


def test_queued_until_something_runs(submitted: Submission, settings: Settings) -> None:
    assert job_status(submitted.output, settings).state == "queued"
    _commit(OutputLayout(submitted.output), 0, [None] * 33)
    assert job_status(submitted.output, settings).state == "running"


def test_gone_broker_means_interrupted(submitted: Submission, refused_port: int) -> None:
    gone = Settings(broker_url=f"redis://127.0.0.1:{refused_port}/0")
    current = job_status(submitted.output, gone)
    assert current.state == "interrupted" and "unreachable" in current.note


def test_submit_to_a_down_broker_writes_nothing(tmp_path: Path, news_parquet: Path,
                                                capsys: pytest.CaptureFixture[str], refused_port: int) -> None:
    job = tmp_path / "job.json"
    job.write_text(_spec(tmp_path, news_parquet).model_dump_json())
    code = main(["submit", str(job), "--broker", f"redis://127.0.0.1:{refused_port}/0"])
    assert code == 2 and "cannot reach the broker" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no manifest, so no job "running" forever


@pytest.mark.parametrize(("rate", "state"), [(None, "failed"), (0.9, "failed"), (0.96, "complete"), (1.0, "complete")])
def test_too_many_row_errors_fail_the_job(rate: float | None, state: str, tmp_path: Path, news_parquet: Path,
                                          settings: Settings) -> None:
    fields = {} if rate is None else {"max_error_rate": rate}
    _, layout = prepare(_spec(tmp_path, news_parquet, **fields), settings)
    _commit(layout, 0, ["text is 7 (int), not a string"] * 30 + [None] * 3)
    _commit(layout, 1, ["text is 8 (int), not a string"] * 33)  # 63 of 66 rows: 95% > the default 50%
    current = job_status(layout.location)
    assert current.state == state and current.row_errors == 63
    if state == "failed":
        assert "63 of 66 rows have an error" in current.note and f"max_error_rate {int((rate or 0.5) * 100)}%" in current.note
        assert current.first_errors == ["text is 7 (int), not a string", "text is 8 (int), not a string"]


def test_error_rate_within_the_limit_completes(tmp_path: Path, news_parquet: Path, settings: Settings) -> None:
    _, layout = prepare(_spec(tmp_path, news_parquet), settings)
    _commit(layout, 0, ["bad"] * 10 + [None] * 23)
    _commit(layout, 1, [None] * 33)
    assert job_status(layout.location).state == "complete"


class _Truncating:
    """A runner whose rows 0 and 2 were cut to the model's length."""

    wants_row_index = False

    def run_table(self, inputs: dict[str, list[Any]], progress: Any = None, options: Any = None) -> RunResult:
        rows = len(inputs["text"])
        return RunResult(pa.table({"summary_text": ["s"] * rows, "truncated": [i in (0, 2) for i in range(rows)],
                                   "error": pa.array([None] * rows, pa.string())}), RunStats())


def test_truncated_rows_are_counted_in_the_summary_and_status(tmp_path: Path, news_parquet: Path,
                                                               settings: Settings) -> None:
    spec = _spec(tmp_path, news_parquet, task="summarization", model=str(tiny_model_path("bart")))
    manifest, layout = prepare(spec, settings)
    task = get_task_class("summarization").from_params({})
    for plan in manifest.shards:
        table, summary = run_shard(manifest, plan, task, _Truncating())  # type: ignore[arg-type]
        assert summary["truncated"] == 2
        layout.commit(plan.index, table, summary)
    current = job_status(layout.location)
    assert current.state == "complete" and current.truncated == 4
