"""The models a worker process keeps loaded, and the ones it could not load.

Up to ``BATCHFORMERS_MODEL_SLOTS`` setups (task, parameters, load options: see
:func:`jobs.routing.runner_key`) stay loaded; loading another evicts the least recently
used, and on CUDA an out-of-memory error while loading evicts more until it fits (or none is
left), so the slots are bounded by device memory too. Every load and eviction is a log line
and a metric (:mod:`worker.metrics`).

A setup that failed to load for good (a missing or broken model, a bad parameter) is
remembered for ``FAILED_LOAD_SECONDS``: the next shards of that job fail at once with
the same error instead of loading again, one shard after another; after that a shard
tries again (someone may have fixed the model and run ``retry``). A transient failure
(the network) is not remembered.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time

from jobs.engine.base import Runner, TaskType
from jobs.engine.batching import free_cached_device_memory
from jobs.errors import BatchformersError
from jobs.routing import model_tag, runner_key
from jobs.settings import Settings
from jobs.spec import JobSpec
from jobs.trust import check_model, remote_code
from worker import metrics

log = logging.getLogger(__name__)
_lock = threading.Lock()
_cache: dict[str, tuple[TaskType, Runner]] = {}  # insertion order is recency: the first is evicted first
FAILED_LOAD_SECONDS = 300.0
_failed: dict[str, tuple[float, BatchformersError]] = {}  # setup -> (when, error)
_attempts = 0
_paid: float | None = None  # seconds the last runner_for call spent loading; None when the model was resident


def runner_for(spec: JobSpec, settings: Settings) -> tuple[TaskType, Runner]:
    """The loaded model for ``spec``: reused when resident, else loaded (after the fork) into a slot."""
    global _paid
    remote_code(spec.trust_remote_code, settings)
    check_model(spec.resolved_model(), settings)
    key = runner_key(spec)
    _paid = None
    with _lock:
        if key in _cache:
            _cache[key] = _cache.pop(key)  # now the most recently used
            return _cache[key]
        failed_at, error = _failed.get(key, (0.0, None))
        if error is not None and time.monotonic() - failed_at < FAILED_LOAD_SECONDS:
            raise error
        while len(_cache) >= settings.model_slots:
            _evict_oldest()
        started = time.perf_counter()
        loaded = _load(spec, key, settings.model_slots)
        _paid = time.perf_counter() - started
        _cache[key] = loaded
        return loaded


def _load(spec: JobSpec, key: str, slots: int) -> tuple[TaskType, Runner]:
    global _attempts
    options = spec.load_options()
    while True:
        _attempts += 1
        started = time.perf_counter()
        try:
            task = spec.task_type()
            loaded = (task, task.load(options))
        except Exception as exc:
            if _is_out_of_device_memory(exc) and _cache:
                log.warning("batchformers: no device memory to load %s; evicting a resident model", options.model)
                _evict_oldest()
                continue
            if isinstance(exc, BatchformersError) and _is_permanent(exc):
                _failed[key] = (time.monotonic(), exc)
                log.error("batchformers: cannot load %s model %s in process %s; later shards of its job fail "
                          "at once: %s", spec.task, options.model, os.getpid(), exc)
            raise
        seconds = time.perf_counter() - started
        _failed.pop(key, None)
        log.info("batchformers: loaded %s model %s in process %s (%.1fs, setup %s, %s of %s slots)", spec.task,
                 options.model, os.getpid(), seconds, model_tag(key), len(_cache) + 1, slots)
        metrics.model_loaded(spec.task, seconds)
        return loaded


def _evict_oldest() -> None:
    key = next(iter(_cache))
    name = _cache.pop(key)[0].name
    log.info("batchformers: evicted %s model setup %s in process %s", name, model_tag(key), os.getpid())
    metrics.model_evicted(name)
    gc.collect()  # the evicted runner held the only references to its weights
    free_cached_device_memory()


def _is_out_of_device_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def _is_permanent(exc: BaseException) -> bool:
    from jobs.shard import is_permanent  # the shard's own rule (a network cause is transient)

    return is_permanent(exc)


def take_load_seconds() -> float | None:
    """Seconds the last :func:`runner_for` spent loading a model (evictions included), once; None: it reused one."""
    global _paid
    paid, _paid = _paid, None
    return paid


def loaded_count() -> int:
    """How many models this process holds."""
    return len(_cache)


def load_attempts() -> int:
    """Loads this process started, failed ones included (tests count them)."""
    return _attempts
