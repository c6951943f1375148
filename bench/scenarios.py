"""System scenarios: the fixed cost of a shard, and many workers on one broker.

``shard_overhead``: a tokenize job with one short row per shard on one warm worker
leaves almost nothing but the per-shard machinery (broker round trip, manifest,
reading the rows, commit of part and marker); the spacing of the shards' commit
times is that fixed cost.

``many_workers``: ``workers`` lightweight worker processes (one torch thread each)
on one Redis take a many-shard tokenize job; every row must come out exactly once.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from bench import data
from bench.measure import clock

OVERHEAD_SHARDS = 120


def _spec(model: str, input_path: Path, output: Path, shard_rows: int) -> dict[str, Any]:
    return {"task": "tokenize", "model": model, "input": str(input_path), "output": str(output),
            "columns": {"text": "text", "id": "id"}, "shard_rows": shard_rows}


def _commit_times(output: Path) -> list[dict[str, Any]]:
    markers = sorted((output / "_batchformers" / "shards").glob("[0-9]*.json"))
    return [json.loads(p.read_text()) for p in markers if not p.name.endswith(".failed.json")]


def shard_overhead(model: str, workdir: Path, shards: int = OVERHEAD_SHARDS) -> dict[str, Any]:
    """Seconds per shard of a job whose shards hold one short row each, on one warm worker."""
    from jobs.settings import Settings
    from jobs.spec import load_spec
    from producer.embedded import EmbeddedRedis, LocalWorkers
    from producer.submit import submit
    from producer.watch import wait

    input_path = data.write_parquet({"text": data.text_rows(shards, seed=7)}, workdir / "data" / "overhead.parquet")
    with EmbeddedRedis(persist=False) as redis, LocalWorkers(redis.url, count=1, log_dir=str(workdir / "logs-overhead")):
        settings = Settings(broker_url=redis.url)
        for attempt in ("warm-up", "measured"):
            output = workdir / "runs" / f"overhead-{attempt}"
            shutil.rmtree(output, ignore_errors=True)
            submission = submit(load_spec(_spec(model, input_path, output, 1)), settings)
            status = wait(submission.output, poll=0.2, timeout=600)
            if status.state != "complete":
                raise RuntimeError(f"overhead job did not complete: {status}")
    markers = _commit_times(output)
    times = sorted(m["committed_at"] for m in markers)
    per_shard = (times[-1] - times[0]) / (len(times) - 1)
    in_shard = sum(m["seconds"] for m in markers) / len(markers)
    return {"shards": len(markers), "seconds_per_shard": per_shard, "run_shard_seconds": in_shard}


def many_workers(model: str, workdir: Path, workers: int, rows: int, shard_rows: int) -> dict[str, Any]:
    """``workers`` processes on one broker run a ``rows``-row tokenize job; checks exactly-once output."""
    from jobs.spec import load_spec
    from producer.embedded import EmbeddedRedis, LocalWorkers
    from producer.run import run

    input_path = data.write_parquet({"text": data.text_rows(rows, seed=11)}, workdir / "data" / "many.parquet")
    output = workdir / "runs" / "many-workers"
    shutil.rmtree(output, ignore_errors=True)
    logs = workdir / "logs-many"
    with clock() as total, EmbeddedRedis(persist=False) as redis, LocalWorkers(
        redis.url, count=workers, log_dir=str(logs), extra_env={"BATCHFORMERS_TORCH_THREADS": "1"}
    ):
        started = time.perf_counter()
        status = run(load_spec(_spec(model, input_path, output, shard_rows)), broker_url=redis.url,
                     progress=False, timeout=600)
        job_seconds = time.perf_counter() - started
    indices = ds.dataset(str(output), format="parquet").to_table(columns=["row_index"]).column("row_index")
    values = sorted(indices.to_pylist())
    markers = _commit_times(output)
    return {
        "workers": workers, "rows": rows, "shards": status.shards, "state": status.state,
        "seconds": total.seconds, "job_seconds": job_seconds,
        "rows_out": len(values), "duplicates": len(values) - len(set(values)),
        "missing": len(set(range(rows)) - set(values)), "exactly_once": values == list(range(rows)),
        "committed_markers": len(markers),
        "worker_processes_that_ran_shards": _busy_workers(logs),
    }


def _busy_workers(logs: Path) -> int:
    """Worker logs that record at least one finished shard."""
    return sum(1 for log in logs.glob("worker-*.log") if "succeeded in" in log.read_text(errors="replace"))
