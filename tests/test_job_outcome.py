"""``_SUCCESS`` means success: a job failed by its ``max_error_rate`` leaves ``_FAILED`` (with the reason)
instead, and ``status``, ``inspect`` and ``jobs`` all say failed; a good job still gets ``_SUCCESS``.
Real worker, real Redis, markers read back from the output."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from jobs.io.completion import totals
from jobs.io.layout import FAILED_FILE, SUCCESS_FILE, OutputLayout
from jobs.ledger import Ledger
from jobs.settings import Settings
from jobs.spec import load_spec
from producer.inspect import inspect_output
from producer.jobs_view import job_lines
from producer.report_data import gather
from producer.status import job_status
from producer.submit import prepare, submit
from producer.watch import wait
from tests.models import tiny_model_path
from tests.reliability import tokenize_spec, write_rows

ROWS = 12


@pytest.mark.slow  # a real worker runs both jobs
def test_a_job_with_too_many_row_errors_is_failed_everywhere(tmp_path: Path, shared_workers: Settings) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(ROWS)],
                             "text": [f"There is no mask token in row {i}." for i in range(ROWS)]}), source)
    no_masks = load_spec({"task": "fill_mask", "model": str(tiny_model_path("bert-mlm")), "input": str(source),
                          "output": str(tmp_path / "no-masks"), "columns": {"id": "id"}, "shard_rows": 4})
    bad = submit(no_masks, shared_workers)
    good = submit(tokenize_spec(source, tmp_path / "good"), shared_workers)
    assert wait(bad.output, timeout=240).state == "failed"
    assert wait(good.output, timeout=240).state == "complete"

    failed = Path(bad.output)
    assert not (failed / SUCCESS_FILE).exists()
    marker = json.loads((failed / FAILED_FILE).read_text())
    assert (marker["rows"], marker["errors"], marker["job_id"]) == (ROWS, ROWS, bad.job_id)
    assert marker["reason"].startswith("too many row errors: 12 of 12 rows have an error (100%)")
    assert (Path(good.output) / SUCCESS_FILE).exists() and not (Path(good.output) / FAILED_FILE).exists()

    # Every view says the same: from the broker's ledger, from _FAILED alone, in inspect and in jobs.
    with_broker = job_status(bad.output, shared_workers)
    assert (with_broker.state, with_broker.source) == ("failed", "ledger") and with_broker.finished
    assert with_broker.note == marker["reason"]
    Ledger.for_manifest(redis.Redis.from_url(shared_workers.broker_url), OutputLayout(bad.output).read_manifest()).drop()
    from_marker = job_status(bad.output)
    assert (from_marker.state, from_marker.source, from_marker.row_errors) == ("failed", "failed", ROWS)
    described = inspect_output(bad.output)
    assert (described.state, described.reason) == ("failed", marker["reason"])
    assert described.completed_at == marker["completed_at"]
    lines = {line.job_id: line for line in job_lines(shared_workers, limit=50)}
    assert lines[bad.job_id].state == "failed" and lines[good.job_id].state == "complete"
    assert inspect_output(good.output).state == "complete" and job_status(good.output).state == "complete"
    reported = gather(bad.output)  # the report's page says the same (producer/report.py)
    assert (reported.complete, reported.failure) == (False, marker["reason"]) and gather(good.output).complete


def test_outputs_written_before_failed_existed_read_as_before(tmp_path: Path) -> None:
    """An old output has `_SUCCESS` whatever its row errors: the views judge it by them, all alike."""
    write_rows(tmp_path / "in.parquet", ROWS)
    for name, errors in (("good", 0), ("bad", 1)):
        manifest, layout = prepare(tokenize_spec(tmp_path / "in.parquet", tmp_path / name, shard_rows=1))
        for plan in manifest.shards:
            table = pa.table({"id": [f"r{plan.index}"], "row_index": pa.array([plan.index], pa.int64()),
                              "error": pa.array(["boom" if errors else None], pa.string())})
            layout.commit(plan.index, table, {"rows": 1, "errors": errors, "seconds": 0.01})
        assert layout.mark_complete(totals(layout, manifest, None) or {})  # as the old code wrote it
    for name, state in (("good", "complete"), ("bad", "failed")):
        output = str(tmp_path / name)
        assert (job_status(output).state, inspect_output(output).state) == (state, state)
        assert job_status(output).source == "success"
