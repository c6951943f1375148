"""Timing records and the batchformers end-to-end run.

A :class:`Measurement` keeps wall seconds and CPU seconds: on a shared machine the
wall clock also counts other people's work, CPU seconds only ours. For the end to
end run the CPU seconds are the worker and Redis processes' (children of this one,
counted once they exit) plus this process's own.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds


@dataclass
class Measurement:
    method: str  # baseline | batchformers | floor
    seconds: float
    cpu_seconds: float
    rows: int
    tokens: int
    padding: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": self.rows_per_second, "tokens_per_second": self.tokens_per_second}


@dataclass
class Clock:
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def clock() -> Iterator[Clock]:
    """Wall and CPU seconds of the block (this process and children reaped during it)."""
    result = Clock()
    wall, own, children = time.perf_counter(), time.process_time(), _children_cpu()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - wall
        result.cpu_seconds = time.process_time() - own + _children_cpu() - children


class WorkerPool:
    """A broker and local workers shared by several jobs (quick mode), or none (each run brings its own)."""

    def __init__(self, workers: int, log_dir: Path, shared: bool) -> None:
        self.workers = workers
        self.log_dir = log_dir
        self.shared = shared
        self.broker_url: str | None = None
        self.stack = ExitStack()

    def __enter__(self) -> WorkerPool:
        if self.shared:
            from producer.embedded import EmbeddedRedis, LocalWorkers

            self.broker_url = self.stack.enter_context(EmbeddedRedis(persist=False)).url
            self.stack.enter_context(LocalWorkers(self.broker_url, count=self.workers, log_dir=str(self.log_dir)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


def run_batchformers(
    spec: dict[str, Any], pool: WorkerPool, timeout: float
) -> tuple[Clock, pa.Table, dict[str, float]]:
    """``batchformers run`` for ``spec`` (embedded Redis and workers unless the pool is shared).

    Returns the clock of the whole run, the output read back in ``row_index`` order, and
    ``startup_seconds`` (until the first shard started: processes, imports, model load)
    and ``steady_seconds`` (first shard start to last commit) from the commit markers.
    """
    from jobs.spec import load_spec
    from producer.run import run

    shutil.rmtree(spec["output"], ignore_errors=True)
    began = time.time()
    with clock() as timing:
        job = load_spec(spec)
        status = run(job, broker_url=pool.broker_url, workers=pool.workers, progress=False, timeout=timeout,
                     log_dir=str(pool.log_dir))
    if status.state != "complete":
        raise RuntimeError(f"benchmark job did not complete: {status}; worker logs in {pool.log_dir}")
    table = ds.dataset(spec["output"], format="parquet").to_table()
    table = table.sort_by("row_index")
    indices = table.column("row_index").to_pylist()
    if indices != list(range(status.rows)):
        raise RuntimeError(f"output rows are not each input row exactly once ({len(indices)} of {status.rows})")
    markers = [json.loads(p.read_text()) for p in (Path(spec["output"]) / "_batchformers" / "shards").glob("*.json")
               if not p.name.endswith(".failed.json")]
    first_start = min(m["committed_at"] - m["seconds"] for m in markers)
    last_commit = max(m["committed_at"] for m in markers)
    phases = {"startup_seconds": first_start - began, "steady_seconds": last_commit - first_start,
              "stop_seconds": began + timing.seconds - last_commit, "shards": float(len(markers)),
              "workers": float(pool.workers)}
    return timing, table, phases
