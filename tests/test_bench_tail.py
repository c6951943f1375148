"""``bench --tail``'s cold-start spread, small: what it reports is what the jobs did (each row once, one
model load per worker's job run, both jobs started from the first shards)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import tail
from jobs.testing.worker_logs import histories, runs
from tests.reliability import assert_exactly_once

pytestmark = pytest.mark.slow
SHARDS, SHARD_ROWS = 6, 4


def test_the_spread_scenario_reports_the_loads_and_share_its_jobs_show(tmp_path: Path) -> None:
    result = tail.run_spread(tmp_path, SHARDS, SHARD_ROWS)
    [run_dir] = tmp_path.glob("spread-*")
    ids = [f"r{i}" for i in range(SHARDS * SHARD_ROWS)]
    for task in ("ner", "classification"):
        assert_exactly_once(run_dir / task, ids)
    assert result["rows"] == [len(ids), len(ids)]
    found = histories(run_dir / "logs")
    assert result["loads"] == sum(len(models) for models, _ in found) >= 2
    for models, jobs in found:  # one load per run of one job's shards, no more
        assert len(models) == len(runs(jobs)) <= 2, found
    assert result["first_shards_on_both_jobs"] is True, found
    assert 0 <= result["share_at_first_finish"] < 1
