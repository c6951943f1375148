"""The backlog (issue 27): per job queue and priority, the broker's list lengths; pending shards as status counts them."""

from __future__ import annotations

import os
from pathlib import Path

import redis

from jobs.backlog import pending_shards, read_backlog
from jobs.io.layout import OutputLayout
from jobs.protocol import ledger_keys
from jobs.routing import job_queue, queue_keys
from jobs.settings import Settings
from producer.flower import TASKS_COLUMNS, flower_environment
from producer.status import job_status
from producer.submit import submit
from tests.reliability import queue_lists, tokenize_spec, write_rows
from worker.flower import PENDING_SHARDS, QUEUE_MESSAGES, BacklogCollector, base_queues


def test_a_queued_job_is_its_lists_lengths_until_it_finishes(tmp_path: Path, settings: Settings) -> None:
    write_rows(tmp_path / "in.parquet", 20)
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", priority=2), settings)
    client = redis.Redis.from_url(settings.broker_url)
    queue = job_queue(settings.queue, submission.job_id)
    lengths = [int(client.llen(key)) for key in queue_keys(queue)]
    assert sum(lengths) == 4 and lengths[9 - 2] == 4

    [job] = read_backlog(client, settings.queue)
    assert job.route.queue == queue and job.waiting == {2: 4} and job.messages == sum(lengths)
    assert job.pending == job_status(submission.output, settings).pending == 4 and job.live

    # The metrics Flower serves: the same numbers, one sample per (job, priority).
    samples = {(family.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in BacklogCollector(settings.broker_url, {settings.queue}).collect() for sample in family.samples}
    assert samples == {(QUEUE_MESSAGES, (("job", submission.job_id), ("priority", "2"))): 4,
                       (PENDING_SHARDS, (("job", submission.job_id),)): 4}

    client.delete(*queue_lists(settings.broker_url, settings.queue))  # the messages taken ...
    assert read_backlog(client, settings.queue)[0].live  # ... the job still runs: it stays, with 0
    layout = OutputLayout(submission.output)
    layout.cancel()  # ... cancelled: it goes
    assert not read_backlog(client, settings.queue)[0].live
    layout.uncancel()
    assert read_backlog(client, settings.queue)[0].live
    client.hset(ledger_keys(submission.job_id)[0], "finished_at", 1.0)  # ... finished: it goes
    assert not read_backlog(client, settings.queue)[0].live
    assert not list(BacklogCollector(settings.broker_url, {settings.queue}).collect())[0].samples


def test_a_job_whose_shards_all_failed_is_over(tmp_path: Path, settings: Settings) -> None:
    write_rows(tmp_path / "in.parquet", 10)
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out"), settings)
    client = redis.Redis.from_url(settings.broker_url)
    client.delete(*queue_lists(settings.broker_url, settings.queue))
    ledger, _committed, _unread, failed, _running = ledger_keys(submission.job_id)
    client.hset(ledger, mapping={"shards": 2})
    client.hset(failed, mapping={"0": "boom"})
    assert read_backlog(client, settings.queue)[0].pending == 1 and read_backlog(client, settings.queue)[0].live
    client.hset(failed, mapping={"1": "boom"})
    assert not read_backlog(client, settings.queue)[0].live


def test_pending_counts_like_status() -> None:
    assert pending_shards(10, committed={0, 1}, failed={1, 2}, running={2, 3, 4}) == 10 - 2 - 1 - 2
    assert pending_shards(2, committed={0, 1}, failed=set(), running={1}) == 0


def test_job_queues_a_worker_reported_are_not_base_queues() -> None:
    assert base_queues({"bf", "bf.ner-1", "bf.ner-2", "other"}) == {"bf", "other"}


def test_flower_runs_with_the_job_queues_and_shows_job_and_shard(settings: Settings) -> None:
    env = flower_environment(settings)
    assert Path(env["FLOWER_CONF"]) == Path(__file__).resolve().parents[2] / "worker" / "flowerconfig.py"
    assert "args" in env["FLOWER_TASKS_COLUMNS"].split(",") and env["BATCHFORMERS_QUEUE"] == settings.queue
    os.environ["FLOWER_TASKS_COLUMNS"] = "name,uuid"
    try:
        assert flower_environment(settings)["FLOWER_TASKS_COLUMNS"] == "name,uuid" != TASKS_COLUMNS  # theirs wins
    finally:
        del os.environ["FLOWER_TASKS_COLUMNS"]
