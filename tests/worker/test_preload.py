"""A pool process loads its job's model before the first shard arrives (worker.preload), with real workers.

Each test waits for the worker's own log line at the point it needs (generous deadlines, never
a timed assertion), then enqueues the job's shards and checks its markers.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.dispatch import enqueue, messages_for, time_limits
from jobs.io.layout import OutputLayout
from jobs.settings import Settings
from jobs.spec import JobSpec, load_spec
from producer import embedded
from producer.broker import sending_app
from producer.submit import prepare
from producer.watch import wait
from worker import preload

LOG_DEADLINE = 120.0  # seconds: a loaded machine imports torch slowly
LOADED = "batchformers: loaded ner model"


def _spec(rows: Path, model: Path, output: Path) -> JobSpec:
    return load_spec({"task": "ner", "model": str(model), "input": str(rows), "output": str(output),
                      "columns": {"text": "body", "id": "doc_id"}, "device": "cpu"})


def _log_of(workers: Any) -> str:
    return "".join(path.read_text(errors="replace") for path in sorted(Path(workers.log_dir).glob("*.log")))


def _wait_for_log(workers: Any, text: str) -> str:
    deadline = time.monotonic() + LOG_DEADLINE
    while time.monotonic() < deadline:
        log = _log_of(workers)
        if text in log:
            return log
        assert all(p.poll() is None for p in workers.processes), log
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in the worker log:\n{_log_of(workers)}")


def _preloading(spec: JobSpec) -> dict[str, str]:
    return {preload.PRELOAD_OUTPUT_ENV: spec.output, preload.PRELOAD_SPEC_ENV: spec.fingerprint()}


def _enqueue(spec: JobSpec, settings: Settings) -> None:
    manifest, layout = prepare(spec, settings)
    enqueue(messages_for(manifest, layout), settings, sending_app(settings), limits=time_limits(spec, settings),
            spec=spec)


def test_the_producer_and_the_worker_name_the_same_variables() -> None:
    assert (embedded.PRELOAD_OUTPUT_ENV, embedded.PRELOAD_SPEC_ENV) == (preload.PRELOAD_OUTPUT_ENV,
                                                                          preload.PRELOAD_SPEC_ENV)


def test_a_manifest_of_another_spec_is_not_the_job_to_preload(news_parquet: Path, ner_model: Path,
                                                               tmp_path: Path, settings: Settings) -> None:
    spec = _spec(news_parquet, ner_model, tmp_path / "out")
    prepare(spec, settings)
    layout = OutputLayout(spec.output)
    assert preload.wait_for_manifest(layout, spec.fingerprint(), timeout=0).job_id == layout.read_manifest().job_id
    assert preload.wait_for_manifest(layout, "another-spec", timeout=0) is None  # a job being replaced there


def _maps_torch(pid: int) -> bool:
    """Whether process ``pid`` has torch's library loaded (it imported torch)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc")
def test_only_the_pool_process_imports_torch_and_before_any_shard(start_workers: Any) -> None:
    workers = start_workers(1)  # no job known: the imports only
    _wait_for_log(workers, "transformers, jobs.engine.loading, jobs.engine.staged in process")
    main = workers.processes[0].pid
    children = [int(pid) for pid in Path(f"/proc/{main}/task/{main}/children").read_text().split()]
    assert children and all(_maps_torch(pid) for pid in children)
    assert not _maps_torch(main)  # the main process forks new pool processes: it stays without torch


@pytest.mark.slow
def test_the_pool_process_loads_the_model_before_the_first_shard_and_only_once(
    news_parquet: Path, ner_model: Path, tmp_path: Path, settings: Settings, start_workers: Any
) -> None:
    spec = _spec(news_parquet, ner_model, tmp_path / "out")
    workers = start_workers(1, **_preloading(spec))
    prepare(spec, settings)  # the manifest, as submit writes it, and no message yet
    _wait_for_log(workers, "batchformers: preloaded the model of job")
    _enqueue(spec, settings)
    assert wait(spec.output, timeout=120, settings=settings).state == "complete"
    log = _log_of(workers)
    assert log.count(LOADED) == 1, log  # the shard took the preloaded model
    assert log.index(LOADED) < log.index("Task batchformers.run_shard"), log  # loaded before the message came


@pytest.mark.slow
def test_a_failed_preload_leaves_the_shard_its_usual_error_and_the_worker_working(
    news_parquet: Path, ner_model: Path, tmp_path: Path, settings: Settings, start_workers: Any
) -> None:
    model = tmp_path / "model"
    shutil.copytree(ner_model, model)
    spec = _spec(news_parquet, model, tmp_path / "out")
    manifest, layout = prepare(spec, settings)  # pinned while the model is there
    shutil.rmtree(model)
    workers = start_workers(1, **_preloading(spec))
    _wait_for_log(workers, "batchformers: could not preload the model of job")
    enqueue(messages_for(manifest, layout), settings, sending_app(settings), limits=time_limits(spec, settings),
            spec=spec)
    assert wait(spec.output, timeout=120, settings=settings).state == "failed"
    errors = [record["error"] for record in layout.failed().values()]
    assert len(errors) == len(manifest.shards) and all(str(model) in error for error in errors), errors

    good = _spec(news_parquet, ner_model, tmp_path / "out-good")  # the same worker runs the next job
    _enqueue(good, settings)
    assert wait(good.output, timeout=120, settings=settings).state == "complete"
