"""Prometheus metrics of a worker: rows, shards, batches, batch latency, padding, GPU memory, model loads.

Off unless ``BATCHFORMERS_METRICS_PORT`` is set (``pip install batchformers[metrics]``).
Shards run in prefork child processes, so the metrics use prometheus_client's
multiprocess mode: children write to ``PROMETHEUS_MULTIPROC_DIR`` (a fresh
temporary directory unless set) and the worker's main process serves their sum
on ``http://<host>:<port>/metrics``. Scrape one port per worker (per GPU).

Shard figures come from :func:`shard_committed`, called by the shard task; batch
figures from the batch hook in :mod:`jobs.engine.batching`, so ``jobs`` never imports
prometheus_client.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from celery.signals import task_failure, task_retry, worker_init, worker_process_shutdown, worker_shutdown

from jobs.engine import batching
from jobs.protocol import TASK_NAME
from jobs.settings import DEFAULT_METRICS_ADDRESS, Settings

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SHARD_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)

_metrics: dict[str, Any] = {}
_owned_dir: str | None = None


def setup(port: int, address: str = DEFAULT_METRICS_ADDRESS) -> bool:
    """Create the metrics and serve them on ``port``; False (and a warning) when that fails.

    Call in the worker's main process before the pool forks.
    """
    global _owned_dir
    if _metrics:
        return True
    if MULTIPROC_ENV not in os.environ:
        _owned_dir = tempfile.mkdtemp(prefix="batchformers-metrics-")
        os.environ[MULTIPROC_ENV] = _owned_dir
    try:
        from prometheus_client import CollectorRegistry, start_http_server, values
        from prometheus_client.multiprocess import MultiProcessCollector
    except ImportError:
        log.warning("batchformers: BATCHFORMERS_METRICS_PORT is set but prometheus_client is missing "
                    "(pip install 'batchformers[metrics]'); no metrics")
        return False
    # The value class is chosen from the environment at import, and Celery's CLI may already have
    # imported prometheus_client (Flower's command plugin does): choose again now that it is set.
    values.ValueClass = values.get_value_class()
    _create_metrics()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        log.warning("batchformers: cannot serve metrics on port %s (%s); give each worker its own "
                    "BATCHFORMERS_METRICS_PORT", port, exc)
        return False
    batching.observe_batches(batch_done)
    log.warning("batchformers: Prometheus metrics on http://%s:%s/metrics", address, port)
    return True


def _create_metrics() -> None:
    from prometheus_client import Counter, Gauge, Histogram

    _metrics.update(
        rows=Counter("batchformers_rows", "Rows processed (committed shards).", ["task"]),
        row_errors=Counter("batchformers_row_errors", "Rows whose output has an error.", ["task"]),
        shards=Counter("batchformers_shards", "Shards by outcome (committed, retried, failed).",
                       ["task", "outcome"]),
        shard_seconds=Histogram("batchformers_shard_seconds", "Time to run one shard (read, model, build).",
                                ["task"], buckets=SHARD_BUCKETS),
        copies=Counter("batchformers_copies", "Speculative copies of stragglers run, by outcome (won, lost).",
                       ["outcome"]),
        pieces=Counter("batchformers_pieces", "Pieces of long shards committed before the shard's end."),
        batches=Counter("batchformers_batches", "Model batches run."),
        batch_rows=Counter("batchformers_batch_rows", "Sequences (rows or chunks) fed to the model."),
        batch_seconds=Histogram("batchformers_batch_seconds", "Latency of one model batch.",
                                buckets=LATENCY_BUCKETS),
        tokens=Counter("batchformers_batch_tokens", "Tokens in model batches: real or padded.", ["kind"]),
        padding=Histogram("batchformers_padding_ratio", "Share of a batch's tokens that are padding.",
                          buckets=RATIO_BUCKETS),
        model_loads=Counter("batchformers_model_loads", "Models loaded into a slot (worker.runners).", ["task"]),
        model_load_seconds=Histogram("batchformers_model_load_seconds", "Time to load one model.", ["task"],
                                     buckets=SHARD_BUCKETS),
        model_evictions=Counter("batchformers_model_evictions", "Loaded models evicted for another.", ["task"]),
        gpu_memory=Gauge("batchformers_gpu_memory_bytes", "CUDA memory of the worker's processes.",
                         ["device", "kind"], multiprocess_mode="livesum"),
    )


def shard_committed(task: str, summary: dict[str, Any]) -> None:
    """Count a committed shard (rows, errors, seconds) and sample GPU memory; no-op when disabled."""
    if not _metrics:
        return
    _metrics["rows"].labels(task).inc(summary.get("rows", 0))
    _metrics["row_errors"].labels(task).inc(summary.get("errors", 0))
    _metrics["shards"].labels(task, "committed").inc()
    _metrics["shard_seconds"].labels(task).observe(summary.get("seconds", 0.0))
    sample_gpu_memory()


def piece_committed() -> None:
    """A long shard committed a piece of its rows (jobs.pieces); its last piece counts as the shard."""
    if _metrics:
        _metrics["pieces"].inc()


def copy_finished(won: bool) -> None:
    """A speculative copy (jobs.speculation) ended: it committed the shard first, or the holder did."""
    if _metrics:
        _metrics["copies"].labels("won" if won else "lost").inc()


def model_loaded(task: str, seconds: float) -> None:
    if _metrics:
        _metrics["model_loads"].labels(task).inc()
        _metrics["model_load_seconds"].labels(task).observe(seconds)


def model_evicted(task: str) -> None:
    if _metrics:
        _metrics["model_evictions"].labels(task).inc()


def batch_done(rows: int, tokens: int, padded_tokens: int, seconds: float) -> None:
    if not _metrics:
        return
    _metrics["batches"].inc()
    _metrics["batch_rows"].inc(rows)
    _metrics["batch_seconds"].observe(seconds)
    _metrics["tokens"].labels("real").inc(tokens)
    _metrics["tokens"].labels("padded").inc(padded_tokens)
    if padded_tokens:
        _metrics["padding"].observe(1.0 - tokens / padded_tokens)


def sample_gpu_memory() -> None:
    """Allocated, reserved and peak CUDA memory per device, when torch uses CUDA in this process."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    for index in range(torch.cuda.device_count()):
        device = str(index)
        _metrics["gpu_memory"].labels(device, "allocated").set(torch.cuda.memory_allocated(index))
        _metrics["gpu_memory"].labels(device, "reserved").set(torch.cuda.memory_reserved(index))
        _metrics["gpu_memory"].labels(device, "peak").set(torch.cuda.max_memory_allocated(index))
        torch.cuda.reset_peak_memory_stats(index)


@worker_init.connect
def _on_worker_init(**_: Any) -> None:
    settings = Settings()
    if settings.metrics_port:
        setup(settings.metrics_port, settings.metrics_address)


@task_retry.connect
def _on_retry(sender: Any = None, **_: Any) -> None:
    if _metrics and getattr(sender, "name", None) == TASK_NAME:
        _metrics["shards"].labels("", "retried").inc()


@task_failure.connect
def _on_failure(sender: Any = None, **_: Any) -> None:
    if _metrics and getattr(sender, "name", None) == TASK_NAME:
        _metrics["shards"].labels("", "failed").inc()


@worker_process_shutdown.connect
def _on_process_exit(pid: int | None = None, **_: Any) -> None:
    if _metrics:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    if _owned_dir:
        shutil.rmtree(_owned_dir, ignore_errors=True)
