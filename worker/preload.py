"""Warm a pool process before its first shard: import torch and transformers, and load the job's model when known.

A fresh pool process spends seconds importing torch and transformers before it can load a
model. At ``worker_process_init`` (after the fork, while the worker's main process still
connects to the broker) each pool process:

- imports them at once, before it takes any work (``batchformers worker`` on a cluster too):
  a shard never runs alongside that import, and the worker's main process never imports torch,
  so each process imports it once;
- when started by ``batchformers run`` (:class:`producer.embedded.LocalWorkers`), which knows
  its job before the first message arrives (``BATCHFORMERS_PRELOAD_OUTPUT`` is the job's output
  location, ``BATCHFORMERS_PRELOAD_SPEC`` its spec fingerprint), starts a thread that polls that
  output for the manifest (written by ``submit``; one of another spec is a job being replaced
  there, so it waits for the new one) and loads exactly the setup a shard asks for: the
  manifest's spec, pinned (:func:`jobs.pinning.pinned_spec`), through
  :func:`worker.runners.runner_for`, whose lock makes the first shard wait for this load
  instead of loading twice.

A preload that fails only logs why: the shard then loads the model itself and fails with the
usual error (a failed load for good is remembered by ``runner_for`` and reported the same way).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from typing import Any

from celery.signals import worker_process_init

from jobs.errors import BatchformersError
from jobs.io.layout import OutputLayout
from jobs.manifest import Manifest
from jobs.pinning import pinned_spec
from jobs.protocol import PRELOAD_OUTPUT_ENV, PRELOAD_SPEC_ENV
from jobs.settings import Settings
from worker import runners

log = logging.getLogger(__name__)
HEAVY_MODULES = ("torch", "transformers", "jobs.engine.loading", "jobs.engine.staged")
"""What every task's load imports first (a tokenizer too); the model classes come with the model's load."""
MANIFEST_POLL_SECONDS = 0.05
MANIFEST_WAIT_SECONDS = 120.0  # submit writes it within seconds; after this the shard loads the model itself


@worker_process_init.connect
def _warm_up(**_: Any) -> None:
    import_heavy_modules()
    output = os.environ.get(PRELOAD_OUTPUT_ENV)
    if output:
        start(output, os.environ.get(PRELOAD_SPEC_ENV) or None)


def start(output: str, spec_fingerprint: str | None) -> threading.Thread:
    """Load the model of the job at ``output`` from a thread of this process."""
    thread = threading.Thread(target=_preload, args=(output, spec_fingerprint), name="batchformers-preload",
                              daemon=True)
    thread.start()
    return thread


def _preload(output: str, spec_fingerprint: str | None) -> None:
    try:
        load_job_model(output, spec_fingerprint)
    except Exception:  # never a traceback from a thread nobody waits for: the shard reports its own
        log.exception("batchformers: preloading the model of the job in %s failed", output)


def import_heavy_modules() -> None:
    started = time.perf_counter()
    fresh = [name for name in HEAVY_MODULES if name not in sys.modules]  # torch may be in (thread settings)
    try:
        for name in fresh:
            importlib.import_module(name)
    except Exception as exc:  # a broken install: the shard's own load reports it
        log.warning("batchformers: preload could not import %s in process %s: %s", name, os.getpid(), exc)
        return
    log.info("batchformers: imported %s in process %s (%.1fs)", ", ".join(fresh) or "nothing new", os.getpid(),
             time.perf_counter() - started)


def load_job_model(output: str, spec_fingerprint: str | None) -> None:
    """Load the model of the job at ``output`` as its shards will (see the module docstring)."""
    manifest = wait_for_manifest(OutputLayout(output), spec_fingerprint)
    if manifest is None:
        log.info("batchformers: no manifest of the job in %s after %.0fs; not preloading its model", output,
                 MANIFEST_WAIT_SECONDS)
        return
    try:
        spec = manifest.job_spec()
        runners.runner_for(pinned_spec(spec, manifest), Settings())
    except Exception as exc:  # the shard loads again and fails with the usual error
        log.warning("batchformers: could not preload the model of job %s in process %s: %s", manifest.job_id,
                    os.getpid(), exc)
        return
    log.info("batchformers: preloaded the model of job %s in process %s", manifest.job_id, os.getpid())


def wait_for_manifest(layout: OutputLayout, spec_fingerprint: str | None,
                      timeout: float = MANIFEST_WAIT_SECONDS) -> Manifest | None:
    """The manifest at ``layout`` once it is there (of that spec, when given); None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if layout.has_manifest():
                manifest = layout.read_manifest()
                if spec_fingerprint is None or manifest.spec_fingerprint == spec_fingerprint:
                    return manifest
        except (OSError, ValueError, BatchformersError) as exc:  # half written elsewhere, or unreachable for now
            log.debug("batchformers: manifest at %s not readable yet: %s", layout.location, exc)
        if time.monotonic() > deadline:
            return None
        time.sleep(MANIFEST_POLL_SECONDS)
