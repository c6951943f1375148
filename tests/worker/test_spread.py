"""Spread from the first shard: two workers started together on a backlog of two equal-priority jobs on two
models split across the jobs at once (one model load each), instead of both taking the first job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.settings import Settings
from jobs.spec import load_spec
from jobs.testing.worker_logs import histories, runs
from producer.submit import submit
from producer.watch import wait
from tests.models import tiny_model_path
from tests.reliability import assert_exactly_once, committed_markers, write_rows
from worker.faults import FAULTS_ENV

pytestmark = pytest.mark.slow


def test_workers_started_together_split_across_two_jobs_with_one_load_each(tmp_path: Path, settings: Settings,
                                                                            start_workers: Any) -> None:
    ids = write_rows(tmp_path / "in.parquet", 48)
    base = {"input": str(tmp_path / "in.parquet"), "columns": {"id": "id"}, "shard_rows": 4}
    ner = load_spec({**base, "task": "ner", "model": str(tiny_model_path("bert-ner")), "output": str(tmp_path / "ner")})
    classify = load_spec({**base, "task": "classification", "model": str(tiny_model_path("bert-classifier")),
                          "output": str(tmp_path / "classify")})
    submissions = [submit(ner, settings), submit(classify, settings)]  # 12 shards each, queued before any worker
    workers = start_workers(2, **{FAULTS_ENV: "sleep=0.3"})
    for submission in submissions:
        assert wait(submission.output, timeout=240).state == "complete"
        assert_exactly_once(submission.output, ids)

    found = histories(workers.log_dir)
    firsts = [jobs[0] for _, jobs in found if jobs]
    assert sorted(firsts) == sorted(s.job_id for s in submissions), f"both workers started on one job: {found}"
    first_loads = [models[0] for models, _ in found if models]
    assert sorted(first_loads) == sorted([str(ner.model), str(classify.model)]), f"one model each: {found}"
    for models, jobs in found:  # a worker whose job ran out may help with the other: one more load, no more
        assert len(models) <= 2 and len(models) == len(runs(jobs))

    # Each job had a worker from its first shards: neither waited for the other to finish.
    first_starts = {s.job_id: min(m["started_at"] for m in committed_markers(s.output).values()) for s in submissions}
    last_commits = {s.job_id: max(m["started_at"] + m["seconds"] for m in committed_markers(s.output).values())
                    for s in submissions}
    assert max(first_starts.values()) < min(last_commits.values()), (first_starts, last_commits)
