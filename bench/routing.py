"""Two concurrent jobs on two models: routing off (one FIFO queue) versus on (``python -m bench --routing``).

Both runs use a private Redis, the same two warm workers (one slot each) and the same two jobs,
NER and classification, whose shards reach the broker interleaved, as when two people submit at
the same moment or a retry lands behind another job: A0 B0 A1 B1 ... With routing off every
shard goes to the one queue in that order, so a worker alternates models; with routing on each
job has its own queue and a worker keeps the model it has. Reported per run: wall time from the
first enqueue to the second job's ``_SUCCESS``, model loads (the workers' log lines) and the
seconds they took, without each worker process's first load (which imports transformers and
costs the same either way).

``--routing-model`` picks the models: ``tiny`` (the test fixtures: a load costs little, so the
wall time shows mostly the per-switch overhead) or ``base`` (bench's base-sized models, whose
loads cost what production loads cost).
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

JOB_TIMEOUT = 1800.0
LOADED = re.compile(r"batchformers: loaded \w+ model \S+ in process \d+ \(([0-9.]+)s")
TEXT = "John Smith flew from Paris to Berlin on Monday to meet the board of Acme Corporation."


def _log(message: str) -> None:
    import sys

    print(f"{time.strftime('%H:%M:%S')} [routing] {message}", file=sys.stderr, flush=True)


def _models(kind: str, workdir: Path) -> tuple[str, str]:
    if kind == "tiny":
        from tests.models import tiny_model_path

        return str(tiny_model_path("bert-ner")), str(tiny_model_path("bert-classifier"))
    from bench.models import model_dir

    return str(model_dir("ner", False, workdir)), str(model_dir("classification", False, workdir))


def _interleaved_submit(specs: list[Any], settings: Any) -> list[str]:
    """Write both manifests, then enqueue their shards alternately; the outputs."""
    from jobs.dispatch import enqueue, messages_for, time_limits
    from producer.job_index import remember
    from producer.submit import prepare
    from worker.app import make_app

    app = make_app(settings)
    batches = []
    for spec in specs:
        manifest, layout = prepare(spec, settings)
        remember(settings, manifest.job_id, layout.location)
        batches.append((spec, messages_for(manifest, layout), layout.location))
    longest = max(len(messages) for _, messages, _ in batches)
    for index in range(longest):
        for spec, messages, _ in batches:
            if index < len(messages):
                enqueue([messages[index]], settings, app, limits=time_limits(spec, settings), spec=spec)
    return [location for _, _, location in batches]


def run_once(routing: bool, models: tuple[str, str], workdir: Path, shards: int, shard_rows: int,
             workers: int, log: Any = _log) -> dict[str, Any]:
    from jobs.io.layout import OutputLayout
    from jobs.settings import Settings
    from jobs.spec import load_spec
    from producer.embedded import EmbeddedRedis, LocalWorkers

    label = "on" if routing else "off"
    run_dir = workdir / f"routing-{label}-{uuid.uuid4().hex[:6]}"
    source = run_dir / "in.parquet"
    source.parent.mkdir(parents=True)
    rows = shards * shard_rows
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "text": [f"{TEXT} ({i})" for i in range(rows)]}),
                   source)
    base = {"input": str(source), "columns": {"id": "id"}, "shard_rows": shard_rows}
    specs = [load_spec({**base, "task": "ner", "model": models[0], "output": str(run_dir / "ner")}),
             load_spec({**base, "task": "classification", "model": models[1], "output": str(run_dir / "classify")})]
    env = {"BATCHFORMERS_ROUTING": "1" if routing else "0", "BATCHFORMERS_LEASE_SECONDS": "120",
           "BATCHFORMERS_TORCH_THREADS": "1"}
    queue = f"bf-routing-bench-{uuid.uuid4().hex[:6]}"
    with EmbeddedRedis(persist=False) as server:
        settings = Settings(broker_url=server.url, queue=queue, routing=routing)
        with LocalWorkers(server.url, count=workers, queue=queue, log_dir=str(run_dir / "logs"), extra_env=env):
            time.sleep(1.0)
            started = time.perf_counter()
            outputs = _interleaved_submit(specs, settings)
            deadline = time.monotonic() + JOB_TIMEOUT
            while not all(OutputLayout(output).is_complete() for output in outputs):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"routing {label}: the jobs did not finish in {JOB_TIMEOUT:.0f}s")
                time.sleep(0.2)
            wall = time.perf_counter() - started
    per_worker = [[float(seconds) for seconds in LOADED.findall(path.read_text(errors="replace"))]
                  for path in (run_dir / "logs").glob("*.log")]
    loads = sum(len(times) for times in per_worker)
    reloading = sum(sum(times[1:]) for times in per_worker)
    result = {"routing": label, "workers": workers, "jobs": 2, "shards": 2 * shards, "rows": 2 * rows,
              "wall_seconds": wall, "model_loads": loads, "reload_seconds": reloading}
    log(f"routing {label}: {wall:.1f}s, {loads} model loads ({reloading:.1f}s in loads after the first) "
        f"for {2 * shards} shards")
    return result


def run_routing(workdir: Path, model_kind: str = "tiny", shards: int = 30, shard_rows: int = 20, workers: int = 2,
                log: Any = _log) -> dict[str, Any]:
    """Routing off then on, on the same jobs and workers."""
    models = _models(model_kind, workdir)
    runs = [run_once(routing, models, workdir, shards, shard_rows, workers, log) for routing in (False, True)]
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "models": model_kind, "runs": runs}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Two jobs (NER and classification, {results['models']} models) whose shards reach the broker "
             f"interleaved, {results['runs'][0]['workers']} workers with one model slot each "
             f"({results['date']}, `python -m bench --routing --routing-model {results['models']}`).", "",
             "| routing | shards | wall (s) | model loads | seconds in loads after each worker's first |",
             "|---|---:|---:|---:|---:|"]
    for run in results["runs"]:
        lines.append(f"| {run['routing']} | {run['shards']} | {run['wall_seconds']:.1f} | {run['model_loads']} | "
                     f"{run['reload_seconds']:.1f} |")
    return "\n".join(lines) + "\n"
