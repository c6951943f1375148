"""Model-affine routing and priorities with real worker processes on one real Redis.

One set of workers serves every test here (starting workers is the slow part): two that
serve every model, and one started with ``BATCHFORMERS_MODELS`` (what ``worker --models``
sets) restricted to the classifier.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs import routing
from jobs.io.layout import OutputLayout
from jobs.ledger import marker_times
from jobs.settings import Settings
from jobs.spec import load_spec
from jobs.testing.worker_logs import histories
from jobs.testing.worker_logs import runs as job_runs
from producer.embedded import LocalWorkers
from producer.submit import submit
from producer.watch import wait
from tests.models import tiny_model_path
from tests.reliability import assert_exactly_once, committed_markers, wait_until, write_rows
from worker.routing import CLEANUP_EVERY, FAST_POLL_SECONDS, POLL_SECONDS

pytestmark = pytest.mark.slow
LEASE_SECONDS = 60  # a first model load on a busy machine must not look like a dead worker
GENERAL_WORKERS = 2


@dataclass
class Cluster:
    settings: Settings
    general: LocalWorkers
    restricted: LocalWorkers


@pytest.fixture(scope="module")
def cluster(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    settings = Settings(broker_url=redis_url, queue=f"bf-routing-{uuid.uuid4().hex[:8]}", lease_seconds=LEASE_SECONDS)
    logs = tmp_path_factory.mktemp("routing-logs")
    env = {"BATCHFORMERS_LEASE_SECONDS": str(LEASE_SECONDS), "BATCHFORMERS_TORCH_THREADS": "1"}
    general = LocalWorkers(redis_url, count=GENERAL_WORKERS, queue=settings.queue, log_dir=str(logs / "general"),
                           extra_env=env)
    restricted = LocalWorkers(redis_url, count=1, queue=settings.queue, log_dir=str(logs / "restricted"),
                              extra_env={**env, "BATCHFORMERS_MODELS": str(tiny_model_path("bert-classifier"))})
    try:
        general.start()
        restricted.start()
        yield Cluster(settings, general, restricted)
    finally:  # killed, not stopped warm: a warm stop of four workers cost ~4 s joining their pools
        general.kill()
        restricted.kill()


def _starts(output: str) -> list[float]:
    return sorted(marker_times(marker)[0] for marker in committed_markers(output).values())


def test_two_jobs_on_two_models_load_each_model_once_per_worker(cluster: Cluster, tmp_path: Path) -> None:
    ids = write_rows(tmp_path / "in.parquet", 96)
    base = {"input": str(tmp_path / "in.parquet"), "columns": {"id": "id"}, "shard_rows": 8}
    ner = load_spec({**base, "task": "ner", "model": str(tiny_model_path("bert-ner")), "output": str(tmp_path / "ner")})
    classify = load_spec({**base, "task": "classification", "model": str(tiny_model_path("bert-classifier")),
                          "output": str(tmp_path / "classify")})
    submissions = [submit(ner, cluster.settings), submit(classify, cluster.settings)]  # together: 24 shards
    for submission in submissions:
        assert wait(submission.output, timeout=240).state == "complete"
        assert_exactly_once(submission.output, ids)

    general, restricted = histories(cluster.general.log_dir), histories(cluster.restricted.log_dir)
    ner_job, classify_job = (s.job_id for s in submissions)
    for loads, jobs in general + restricted:
        runs = job_runs(jobs)
        assert len(runs) == len(set(runs)), f"a worker went back to a job it had left: {runs}"
        assert len(loads) <= len(runs), (loads, runs)  # at most one load per job switch, not one per shard
    [(restricted_loads, restricted_jobs)] = restricted
    assert set(restricted_jobs) <= {classify_job}, "the restricted worker took a shard of a model it does not serve"
    assert set(restricted_loads) <= {str(tiny_model_path("bert-classifier"))}
    total_loads = sum(len(loads) for loads, _ in general + restricted)
    assert total_loads <= 2 * GENERAL_WORKERS + 1 < 24
    ran = [job for _, jobs in general + restricted for job in jobs]
    assert sorted(set(ran)) == sorted([ner_job, classify_job]) and len(ran) >= 24

    # Complete jobs with empty queues are dropped from the routes, so workers stop polling their lists.
    client = redis.Redis.from_url(cluster.settings.broker_url)
    wait_until(lambda: not {ner_job, classify_job} & {route.job_id for route in
                                                      routing.read_routes(client, cluster.settings.queue).values()},
               CLEANUP_EVERY * POLL_SECONDS + 10, "finished jobs' routes to be dropped")


def test_a_late_high_priority_job_runs_as_soon_as_a_worker_frees_up(cluster: Cluster, tmp_path: Path) -> None:
    write_rows(tmp_path / "backfill.parquet", 200)
    urgent_ids = write_rows(tmp_path / "urgent.parquet", 2000)
    backfill = load_spec({"task": "tokenize", "model": str(tiny_model_path("bert-ner")), "columns": {"id": "id"},
                          "input": str(tmp_path / "backfill.parquet"), "output": str(tmp_path / "backfill"),
                          "shard_rows": 1})
    urgent = load_spec({"task": "ner", "model": str(tiny_model_path("bert-ner")), "columns": {"id": "id"},
                        "input": str(tmp_path / "urgent.parquet"), "output": str(tmp_path / "urgent"),
                        "shard_rows": 500, "priority": 9})
    behind = submit(backfill, cluster.settings)
    assert behind.shards == 200
    wait_until(lambda: len(committed_markers(behind.output)) >= 2 * GENERAL_WORKERS, 120, "the backfill to run")
    submitted = time.time()
    ahead = submit(urgent, cluster.settings)
    assert wait(ahead.output, timeout=180).state == "complete"
    backfill_done = len(committed_markers(behind.output))
    OutputLayout(behind.output).cancel()  # the rest of the backfill is not this test's business
    redis.Redis.from_url(cluster.settings.broker_url).delete(
        *routing.queue_keys(routing.job_queue(cluster.settings.queue, behind.job_id)))

    assert_exactly_once(ahead.output, urgent_ids)
    assert backfill_done < behind.shards, "the urgent job waited for the whole backfill"
    urgent_starts = _starts(ahead.output)
    backfill_starts = _starts(behind.output)
    # Workers see a new job within a fast poll; from then on each finishes the backfill shard it holds, then
    # takes the urgent job's: at most one backfill shard per worker starts after that.
    seen = submitted + FAST_POLL_SECONDS + 0.3
    assert sum(seen < start < urgent_starts[0] for start in backfill_starts) <= GENERAL_WORKERS
    # While urgent shards waited, nobody started a backfill shard.
    assert not [start for start in backfill_starts if urgent_starts[0] < start < urgent_starts[-1]]
    summary: dict[str, Any] | None = OutputLayout(ahead.output).completion()
    assert summary is not None and summary["rows"] == 2000
