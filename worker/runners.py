"""One loaded model per worker process, reused for every shard of the same job setup."""

from __future__ import annotations

import json
import logging
import os
import threading

from jobs.engine.base import Runner, TaskType
from jobs.errors import SpecError
from jobs.settings import Settings
from jobs.spec import JobSpec

log = logging.getLogger(__name__)
_lock = threading.Lock()
_cache: dict[str, tuple[TaskType, Runner]] = {}


def runner_for(spec: JobSpec, settings: Settings) -> tuple[TaskType, Runner]:
    """Load on first use (after the fork), keep it; a different setup replaces it."""
    if spec.trust_remote_code and not settings.allow_trust_remote_code:
        raise SpecError(
            "trust_remote_code",
            "the job asks for it but this worker does not allow it "
            "(start the worker with BATCHFORMERS_ALLOW_TRUST_REMOTE_CODE=1)",
        )
    options = spec.load_options()
    key = json.dumps([spec.task, spec.params, options.__dict__], sort_keys=True, default=str)
    with _lock:
        if key not in _cache:
            _cache.clear()
            task = spec.task_type()
            _cache[key] = (task, task.load(options))
            log.info("batchformers: loaded %s model %s in process %s", spec.task, options.model, os.getpid())
        return _cache[key]


def loaded_count() -> int:
    """How many models this process holds (tests check it stays at one)."""
    return len(_cache)
