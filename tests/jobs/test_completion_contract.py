"""Job completion's contract on a real Redis and real markers: when _SUCCESS or _FAILED is written, with which totals.

A safety net for moving the module: the outcome rule, the last-commit check with and without a
ledger, the rebuild of a lost ledger and the counting of a redelivered commit are pinned by what
they leave on disk (the outcome files) and on the broker (the ledger's tally).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis

from jobs.io.completion import complete_if_last, count_committed, error_rate_note, outcome, rebuild, totals
from jobs.io.layout import OutputLayout
from jobs.ledger import Ledger, job_keys
from jobs.manifest import Manifest
from jobs.settings import Settings
from producer.submit import prepare
from tests.reliability import tokenize_spec, write_rows

SHARDS = 3


@pytest.fixture
def job(tmp_path: Path, settings: Settings, client: redis.Redis) -> Iterator[tuple[Manifest, OutputLayout, Ledger]]:
    """A prepared job of 3 one-row shards that tolerates a third of its rows failing, with no ledger yet."""
    write_rows(tmp_path / "in.parquet", SHARDS)
    spec = tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=1, max_error_rate=0.5)
    manifest, layout = prepare(spec, settings)
    yield manifest, layout, Ledger.for_manifest(client, manifest, retention=60)
    client.delete(*job_keys(manifest.job_id))


def _commit(layout: OutputLayout, shard: int, errors: int = 0, truncated: int = 0,
            committed_at: float = 0.0) -> dict[str, Any]:
    """Commit one row for ``shard``; its marker as the worker passes it on (with ``committed_at``)."""
    summary: dict[str, Any] = {"rows": 2, "errors": errors, "seconds": 1.5, "truncated": truncated}
    layout.commit(shard, pa.table({"row_index": [shard]}), summary)
    committed_at = committed_at or 1000.0 + 10 * shard
    return {**summary, "committed_at": committed_at}


def _commit_all(layout: OutputLayout, manifest: Manifest, ledger: Ledger | None, **fields: int) -> list[bool]:
    return [complete_if_last(layout, manifest, shard, _commit(layout, shard, **fields), ledger)
            for shard in range(SHARDS)]


def test_the_error_rate_rule_allows_exactly_the_rate() -> None:
    assert error_rate_note(5, 10, 0.5) is None
    assert error_rate_note(0, 0, 0.0) is None
    note = error_rate_note(6, 10, 0.5)
    assert note is not None and note.startswith("too many row errors") and "6 of 10" in note and "60%" in note
    assert "50%" in note
    zero_rows = error_rate_note(1, 0, 0.0)
    assert zero_rows is not None and "100%" in zero_rows
    assert "1,234 of 2,000" in (error_rate_note(1234, 2000, 0.1) or "")


def test_the_outcome_of_a_job() -> None:
    assert outcome(3, 3, 0, 10, 5, 0.5) == ("complete", "")
    failed = outcome(3, 3, 0, 10, 6, 0.5)
    assert failed is not None and failed[0] == "failed" and failed[1] == error_rate_note(6, 10, 0.5)
    assert outcome(3, 2, 1, 10, 0, 0.5) == ("failed", "1 shard failed")
    assert outcome(3, 1, 2, 10, 0, 0.5) == ("failed", "2 shards failed")
    assert outcome(3, 2, 0, 10, 0, 0.5) is None
    assert outcome(3, 0, 0, 0, 0, 0.5) is None


def test_the_last_commit_writes_success_with_the_ledger_totals(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    manifest, layout, ledger = job
    assert _commit_all(layout, manifest, ledger, errors=1, truncated=1) == [False, False, True]
    summary = layout.completion()
    assert summary is not None and layout.job_failure() is None
    completed_at = summary.pop("completed_at")
    assert summary == {"job_id": manifest.job_id, "rows": 6, "errors": 3, "truncated": 3, "shards": SHARDS,
                       "first_start": 998.5, "last_commit": 1020.0}
    tally = ledger.read()
    assert tally is not None and tally.finished_at == completed_at
    assert 0 < ledger.client.ttl(job_keys(manifest.job_id)[0]) <= 60  # finished: expires after the retention
    # A redelivered last commit finds the job finished: it writes nothing again.
    assert complete_if_last(layout, manifest, SHARDS - 1, _commit(layout, SHARDS - 1), ledger) is False
    assert layout.completion() == {**summary, "completed_at": completed_at}


def test_a_second_count_of_the_last_commit_before_the_outcome_completes(
        job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    """A worker that counted the last commit and died before writing _SUCCESS: the redelivery writes it."""
    manifest, layout, ledger = job
    ledger.rebuild([])
    for shard in range(SHARDS):
        assert ledger.record_commit(shard, _commit(layout, shard)) == (True, shard + 1)
    assert not layout.is_finished()
    count_committed(layout, manifest, SHARDS - 1, ledger)
    assert layout.is_complete()


def test_too_many_row_errors_write_failed_instead(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    manifest, layout, ledger = job
    assert _commit_all(layout, manifest, ledger, errors=2) == [False, False, True]
    assert layout.completion() is None
    failure = layout.job_failure()
    assert failure is not None and failure["rows"] == 6 and failure["errors"] == 6
    assert failure["reason"] == error_rate_note(6, 6, 0.5)
    tally = ledger.read()
    assert tally is not None and tally.finished_at == failure["completed_at"]


def test_without_a_ledger_every_marker_is_read(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    manifest, layout, _ = job
    assert _commit_all(layout, manifest, None, errors=1) == [False, False, True]
    summary = layout.completion()
    assert summary is not None
    summary.pop("completed_at")
    markers = layout.read_committed(range(SHARDS))  # the span is the markers' own, as written at commit
    first = min(m["committed_at"] - m["seconds"] for m in markers.values())
    last = max(m["committed_at"] for m in markers.values())
    assert markers[0]["committed_at"] < markers[2]["committed_at"]
    assert summary == {"job_id": manifest.job_id, "rows": 6, "errors": 3, "truncated": 0, "shards": SHARDS,
                       "first_start": first, "last_commit": last}


def test_without_a_ledger_the_totals_read_every_marker(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    manifest, layout, _ = job
    for shard in range(SHARDS - 1):
        _commit(layout, shard, errors=1, truncated=2)
    assert totals(layout, manifest, None) is None  # a shard has no marker yet
    assert complete_if_last(layout, manifest) is False and not layout.is_finished()
    _commit(layout, SHARDS - 1)
    found = totals(layout, manifest, None)
    assert found is not None
    assert found["truncated"] == 4 and found["errors"] == 2 and found["shards"] == SHARDS
    assert found["first_start"] <= found["last_commit"]
    assert complete_if_last(layout, manifest) is True and layout.is_complete()
    assert complete_if_last(layout, manifest) is False  # _SUCCESS is written once


def test_a_lost_ledger_is_rebuilt_and_the_unread_markers_absorbed(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    manifest, layout, ledger = job
    assert complete_if_last(layout, manifest, 0, _commit(layout, 0, errors=1), ledger) is False
    ledger.drop()  # the broker lost it
    layout.mark_failed(2, "boom", attempts=1)  # a shard that failed (and is retried by hand later)
    assert complete_if_last(layout, manifest, 1, _commit(layout, 1, errors=1), ledger) is False
    tally = ledger.read()
    assert tally is not None and tally.committed == {0, 1} and tally.unread == {0} and tally.failed == {2: "boom"}
    layout.clear_failed(2)
    assert complete_if_last(layout, manifest, 2, _commit(layout, 2, errors=1), ledger) is True
    summary = layout.completion()
    assert summary is not None and summary["rows"] == 6 and summary["errors"] == 3 and summary["truncated"] == 0
    on_disk = layout.read_committed([0])[0]  # shard 0 was absorbed from its marker, written now
    assert summary["first_start"] == 1008.5 and summary["last_commit"] == on_disk["committed_at"]
    tally = ledger.read()
    assert tally is not None and tally.unread == set() and tally.rows == 6


def test_rebuild_counts_other_commits_and_failures_not_this_one(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    manifest, layout, ledger = job
    _commit(layout, 0)
    _commit(layout, 1)
    layout.mark_failed(2, "bad input", attempts=2)
    rebuild(layout, manifest, ledger, 1)
    tally = ledger.read()
    assert tally is not None and tally.committed == {0} and tally.unread == {0} and tally.failed == {2: "bad input"}


def test_a_ledger_that_counts_a_shard_without_a_marker_is_rebuilt(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    manifest, layout, ledger = job
    _commit(layout, 0)
    ledger.rebuild([0, 1, 2])  # counts shards 1 and 2, whose markers are not there
    assert totals(layout, manifest, ledger) is None
    tally = ledger.read()
    assert tally is not None and tally.committed == {0} and tally.unread == {0}
    ledger.drop()
    assert totals(layout, manifest, ledger) is None and ledger.read() is not None  # no ledger: one is made


def test_a_redelivered_commit_is_counted_and_completes_the_job(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    manifest, layout, ledger = job
    for shard in range(SHARDS - 1):
        assert complete_if_last(layout, manifest, shard, _commit(layout, shard), ledger) is False
    _commit(layout, SHARDS - 1)  # its worker died after the marker, before counting it
    count_committed(layout, manifest, 0, ledger)  # a commit counted already: nothing changes
    assert not layout.is_finished()
    count_committed(layout, manifest, SHARDS - 1, ledger)
    assert layout.is_complete()
    tally = ledger.read()
    assert tally is not None and tally.committed == set(range(SHARDS)) and tally.finished_at is not None


def test_counting_a_shard_without_a_marker_does_nothing(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    manifest, layout, ledger = job
    count_committed(layout, manifest, 0, ledger)
    assert ledger.read() is None and not layout.is_finished()


def test_a_count_of_every_shard_without_every_marker_writes_nothing(
        job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    """The ledger counted three commits, but one marker is gone (a hand-deleted file): no _SUCCESS."""
    manifest, layout, ledger = job
    ledger.rebuild([])
    marker = _commit(layout, 0)
    for shard in range(SHARDS):
        ledger.record_commit(shard, marker)
    _commit(layout, 1)
    assert complete_if_last(layout, manifest, 0, marker, ledger) is False
    assert not layout.is_finished()
    tally = ledger.read()
    assert tally is not None and tally.committed == {0, 1} and tally.unread == {0, 1}  # rebuilt from the markers


def test_totals_without_a_ledger_on_the_broker_rebuild_it(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    manifest, layout, ledger = job
    for shard in range(SHARDS):
        _commit(layout, shard)
    assert totals(layout, manifest, ledger) is None
    tally = ledger.read()
    assert tally is not None and tally.committed == tally.unread == set(range(SHARDS))
    found = totals(layout, manifest, ledger)  # now every marker is absorbed
    assert found is not None and found["rows"] == 2 * SHARDS


def test_a_caller_without_a_commit_to_count_reads_the_markers(job: tuple[Manifest, OutputLayout, Ledger]) -> None:
    """A ledger but no shard (nothing to count): the markers decide, and the ledger is finished after."""
    manifest, layout, ledger = job
    for shard in range(SHARDS):
        _commit(layout, shard, errors=1)
    assert complete_if_last(layout, manifest, ledger=ledger) is True
    summary = layout.completion()
    assert summary is not None and summary["rows"] == 6 and summary["errors"] == 3
