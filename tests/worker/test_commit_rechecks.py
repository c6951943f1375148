"""Just before a shard commits, what may have changed while it ran is read again from the output: a run
whose output now holds another job, or whose shard another run committed meanwhile (and ``compact`` has
merged away since), does not commit. Real Redis leases, real tokenize runs, Parquet read back."""

from __future__ import annotations

from pathlib import Path

import redis

from jobs.io.layout import OutputLayout
from jobs.manifest import Manifest
from jobs.settings import Settings
from jobs.shard import Hooks, run_and_commit
from producer.compact import compact
from producer.plan import plan_job
from producer.submit import prepare
from tests.reliability import read_back, tokenize_spec, write_rows
from worker.deliveries import DeliveryCount
from worker.lease import ShardLease
from worker.runners import runner_for

ROWS = 4
LEASE = 30.0  # no heartbeat during a test: only the commit-time checks decide


def _run(manifest: Manifest, shard: int, layout: OutputLayout, client: redis.Redis, settings: Settings,
         holder: str, hooks: Hooks | None = None) -> dict[str, object]:
    """One attempt, as a worker holding the lease runs it; the lease is released after, as the task does."""
    lease = ShardLease(client, manifest.job_id, shard, holder, LEASE)
    assert lease.acquire()
    try:
        return run_and_commit(manifest, shard, layout, lease, DeliveryCount(client, manifest.job_id, shard), None,
                              settings, runner_for, hooks=hooks)
    finally:
        lease.release()


def test_a_paused_run_does_not_republish_a_part_compacted_away(tmp_path: Path, client: redis.Redis,
                                                                redis_url: str) -> None:
    write_rows(tmp_path / "in.parquet", ROWS)
    manifest, layout = prepare(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=1))
    settings = Settings(broker_url=redis_url, lease_seconds=LEASE)

    def meanwhile(shard: int) -> None:
        """While this run is paused past its lease, another worker runs every shard, the job completes
        and is compacted into one part; the lease is free again when this run resumes."""
        client.delete(f"batchformers:lease:{manifest.job_id}:{shard}")  # expired during the pause
        for other in range(ROWS):
            _run(manifest, other, layout, client, settings, "other/2")
        assert layout.is_complete()
        compact(layout.location, target_bytes=2**30)
        assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == ["part-00000.parquet"]

    result = _run(manifest, 1, layout, client, settings, "paused/1", Hooks(before_commit=meanwhile))
    assert result["skipped"] == "already committed"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == ["part-00000.parquet"]
    assert sorted(read_back(tmp_path / "out").column("row_index").to_pylist()) == list(range(ROWS))


def test_a_run_whose_output_now_holds_another_job_does_not_commit(tmp_path: Path, client: redis.Redis,
                                                                  redis_url: str) -> None:
    write_rows(tmp_path / "in.parquet", ROWS)
    manifest, layout = prepare(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=1))
    other, _ = plan_job(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=2))
    assert other.job_id != manifest.job_id
    settings = Settings(broker_url=redis_url, lease_seconds=LEASE)

    def taken(_shard: int) -> None:  # the output was given to another job while this shard ran
        layout.write_manifest(other)

    result = _run(manifest, 0, layout, client, settings, "late/1", Hooks(before_commit=taken))
    assert result["skipped"] == "the output holds another job"
    assert list((tmp_path / "out").glob("*.parquet")) == [] and layout.marker_numbers() == (set(), set())
