"""Workers killed inside the commit itself: during the part write, between part and marker, and
between marker and ``_SUCCESS``. Each ends with every row once, one part per shard, no temporary
file left, and ``_SUCCESS`` written once with the job's totals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs.io.layout import OutputLayout
from jobs.settings import Settings
from producer.submit import submit
from producer.watch import wait
from tests.reliability import (
    assert_exactly_once,
    committed_markers,
    starts,
    temporaries,
    tokenize_spec,
    wait_drained,
    wait_until,
    write_rows,
)
from worker.faults import FAULTS_ENV

pytestmark = pytest.mark.slow
LEASE = 2.0


def _success(output: str) -> dict[str, Any]:
    return json.loads((Path(output) / "_batchformers" / "_SUCCESS").read_text())


def test_kill_between_marker_and_success(tmp_path: Path, settings: Settings, start_workers: Any) -> None:
    """A one-shard job killed after its marker and before _SUCCESS: the shard is the job's last,
    so only the redelivered copy can write _SUCCESS."""
    count = tmp_path / "starts.txt"
    faults = f"kill-committed=0,once={tmp_path / 'once'},count={count}"
    start_workers(1, BATCHFORMERS_LEASE_SECONDS=str(LEASE), **{FAULTS_ENV: faults})
    ids = write_rows(tmp_path / "single.parquet", 5)
    single = submit(tokenize_spec(tmp_path / "single.parquet", tmp_path / "single"), settings)
    assert wait(single.output, timeout=60).state == "complete"
    wait_drained(settings.broker_url, settings.queue, single.job_id)
    assert len(starts(count)[0]) == 1  # killed after the commit: not run again
    assert_exactly_once(single.output, ids)
    assert OutputLayout(single.output).is_complete(), "the shard killed after its marker never got _SUCCESS"
    assert _success(single.output)["rows"] == 5 and _success(single.output)["shards"] == 1


def test_kills_during_the_part_write_and_before_the_marker(tmp_path: Path, settings: Settings,
                                                           start_workers: Any) -> None:
    """Shard 1 killed with its part in a temporary file, shard 2 with its part visible and no marker."""
    count = tmp_path / "starts.txt"
    faults = f"kill-part-written=1,kill-part-published=2,once={tmp_path / 'once'},count={count}"
    start_workers(1, BATCHFORMERS_LEASE_SECONDS=str(LEASE), **{FAULTS_ENV: faults})
    ids = write_rows(tmp_path / "three.parquet", 15)
    three = submit(tokenize_spec(tmp_path / "three.parquet", tmp_path / "three"), settings)
    assert wait(three.output, timeout=60).state == "complete"
    wait_until(lambda: OutputLayout(three.output).is_complete(), 30, "_SUCCESS")
    wait_drained(settings.broker_url, settings.queue, three.job_id)
    assert {shard: len(times) for shard, times in starts(count).items()} == {0: 1, 1: 2, 2: 2}
    markers = committed_markers(three.output)
    assert {shard: marker["attempt"] for shard, marker in markers.items()} == {0: 1, 1: 2, 2: 2}
    assert sorted(path.name for path in Path(three.output).iterdir() if path.is_file()) == [
        f"part-{shard:05d}.parquet" for shard in range(3)]
    assert temporaries(three.output) == []
    assert_exactly_once(three.output, ids)
    assert _success(three.output)["rows"] == 15 and _success(three.output)["shards"] == 3
