"""Start-up: what a small job, ``submit`` and ``status`` cost before any real work (``python -m bench --startup``).

Every figure is the median of ``runs`` fresh processes (one process is noise), printed with the load
average (1 min) before and after it, since on a shared machine a wall clock counts other
people's work too:

- ``batchformers run`` of a 50-row NER job on the tiny fixture model, command to exit, through
  the venv's console script, each run into a fresh output directory;
- where that time goes (the breakdown): the CLI's imports (a fresh ``python -c``; the heaviest
  packages from ``-X importtime``), the producer's steps called one by one in a fresh process
  (spec, model check, pin, plan), and an instrumented ``run`` in a fresh process (the CLI's
  ``main`` with timing wrappers on the embedded Redis and the local workers, their logs kept),
  whose worker log (Celery's ``ready``, ``loaded ... (N s)``, task received / succeeded) and
  commit markers (``seconds``) give worker start, model load, first shard and commit;
- ``submit`` against a private Redis (so the queue goes away with it), ``status`` and ``jobs`` of
  a job with 5,000 commit markers on a moto S3 server (built by :func:`bench.scale.status_at_scale`,
  then finished and given its status record as the last commit and ``submit`` would),
  ``--help``, ``--version``, and ``batchformers demo`` in a fresh work directory;
- the other helpers' measurements, through :data:`HOOKS` (see :func:`hook_figures`).

A step that cannot be measured says why in the table instead of showing a number.
``--quick`` (one process each, 20 markers, one instrumented run, no demo, no hooks) only
checks that the bench works: tests/test_bench_quick.py asserts the report's shape, never a time.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import statistics
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.processes import ROOT, console_script, environment, fresh_output, load_average, seconds_of
from bench.startup_jobs import local_copy, status_output
from bench.startup_probes import (
    WarmRuns,
    heaviest_imports,
    import_samples,
    instrumented_run,
    run_sample,
    step_samples,
)
from bench.startup_report import RUN_ROWS, breakdown_table

FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "models" / "bert-ner"
NEWS = ROOT / "examples" / "data" / "news.parquet"
RUNS = 5
STATUS_SHARDS = 5000
QUICK_STATUS_SHARDS = 20


TARGETS: dict[str, float | None] = {
    "run": 5.0, "run_warm": 5.0, "run_warm_first": None, "submit": 1.5, "status": 0.5, "jobs": 0.5, "status_local": 0.5, "jobs_local": 0.5, "help": 0.3, "version": None, "demo": 10.0,
}
"""Seconds each command may take before it feels slow; None: reported, no target."""
LABELS = {
    "run": f"`batchformers run`, {RUN_ROWS}-row NER, tiny model", "submit": "`batchformers submit` (local model, broker up)",
    "status": "`batchformers status` at {shards:,} shards (S3)", "jobs": "`batchformers jobs` at {shards:,} shards (S3)",
    "run_warm_first": f"`batchformers run --keep-warm`, {RUN_ROWS}-row NER: the first run, which starts the warm pool",
    "run_warm": f"`batchformers run --keep-warm`, {RUN_ROWS}-row NER: a later run on the warm pool (model loaded)",
    "model_stack": "a fresh `python -c` importing torch, transformers and the NER model class (the floor under `run`'s "
                   "pool process)",
    "status_local": "`batchformers status` at {shards:,} shards (the same job on local disk)",
    "jobs_local": "`batchformers jobs` at {shards:,} shards (the same job on local disk)",
    "s3_client": "S3 client alone: `import s3fs` and one `ls` in a fresh process (the floor under the S3 rows)",
    "help": "`batchformers --help`", "version": "`batchformers --version`",
    "demo": "`batchformers demo` (fresh work directory)",
}

MODEL_STACK = [sys.executable, "-c", "import torch, transformers; from transformers import BertForTokenClassification"]
"""What a pool process must import before it can load the NER model, whatever batchformers does."""

HOOKS = {
    "overhead": "bench.overhead",  # per-shard overhead ms, Redis round trips per shard
    "reads": "bench.reads",  # bytes read per shard vs its share, 1M-row Arrow and Parquet on moto S3 (H3)
    "host": "bench.host",  # the host path through `run` vs one raw tokenizer call (H4)
}
"""Other fixed costs: each module exposes ``figures(workdir, quick, log) -> list[dict]``."""
HOOK_FUNCTION = "figures"
QUIET_LOAD = 1.5  # figures are taken below this load average (1 min) ...
SETTLE_SECONDS = 120.0  # ... waiting at most this long for it

Log = Callable[[str], None]


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [startup] {message}", file=sys.stderr, flush=True)


def settle(quiet: float = QUIET_LOAD, limit: float = SETTLE_SECONDS) -> None:
    """Wait (``limit`` seconds at most) until the load average is under ``quiet``: the bench's own
    previous step (writing 5,000 markers to moto, say) must not weigh on the next figure."""
    deadline = time.monotonic() + limit
    while load_average() >= quiet and time.monotonic() < deadline:
        time.sleep(2)


def figure(name: str, runs: int, sample: Callable[[], float], **fields: Any) -> dict[str, Any]:
    """``sample()`` (seconds of one fresh process) ``runs`` times; its median beside the target.
    A published figure (several runs) waits for a quiet machine first; --quick's single run only
    checks that the bench works, and does not wait."""
    if runs > 1:
        settle()
    target = TARGETS.get(name)
    result: dict[str, Any] = {"name": name, "label": LABELS.get(name, name).format(**fields), "target": target,
                              "samples": [], "load": [load_average()], **fields}
    try:
        for _ in range(runs):
            result["samples"].append(sample())
    except Exception as exc:  # a figure that cannot be taken says why; the others go on
        result["error"] = f"{type(exc).__name__}: {exc}"[:500]
    result["load"].append(load_average())
    result["median"] = statistics.median(result["samples"]) if result["samples"] else None
    result["met"] = None if target is None or result["median"] is None else result["median"] <= target
    return result


def cli_figures(runs: int) -> list[dict[str, Any]]:
    script = str(console_script())
    return [figure(name, runs, lambda flag=flag: seconds_of([script, flag]))
            for name, flag in (("help", "--help"), ("version", "--version"))]


def write_job(workdir: Path) -> Path:
    """The first 50 rows of the example news as Parquet, and a NER spec over them."""
    import pyarrow.parquet as pq

    workdir.mkdir(parents=True, exist_ok=True)
    rows = workdir / "news-50.parquet"
    pq.write_table(pq.read_table(NEWS).slice(0, RUN_ROWS), rows)
    spec = {"task": "ner", "model": str(FIXTURE_MODEL), "input": str(rows),
            "columns": {"text": "body", "id": "doc_id"}, "output": str(workdir / "out" / "unused")}
    path = workdir / "ner-50.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def submit_sample(spec_file: Path, workdir: Path, broker_url: str) -> float:
    env = environment(BATCHFORMERS_QUEUE=f"bf-startup-{uuid.uuid4().hex[:8]}")
    output = fresh_output(workdir, "submit")
    return seconds_of([str(console_script()), "submit", str(spec_file), "--output", str(output),
                     "--broker", broker_url], env)


@contextlib.contextmanager
def private_broker() -> Iterator[str]:
    """A private Redis server: whatever submit enqueues goes away with it."""
    from producer.embedded import EmbeddedRedis

    with EmbeddedRedis(persist=False) as server:
        yield server.url


def broker_figures(spec_file: Path, workdir: Path, runs: int, shards: int, log: Log) -> dict[str, Any]:
    from bench.scale import MotoS3

    found: dict[str, Any] = {"figures": []}
    with private_broker() as broker_url:
        log(f"submit x{runs}")
        found["figures"].append(figure("submit", runs, lambda: submit_sample(spec_file, workdir, broker_url)))
        with MotoS3() as s3:
            log(f"a job with {shards} commit markers on moto S3")
            try:
                output, found["status_in_process"] = status_output(s3, broker_url, shards)
            except Exception as exc:
                found["figures"] += [_unmeasured(name, exc, shards=shards) for name in ("status", "jobs")]
                return found
            env = environment(BATCHFORMERS_BROKER_URL=broker_url, **s3.env)
            script = str(console_script())
            log(f"status and jobs x{runs}")
            found["figures"].append(figure("status", runs, lambda: seconds_of([script, "status", output], env),
                                           shards=shards))
            found["figures"].append(figure("jobs", runs, lambda: seconds_of([script, "jobs"], env), shards=shards))
            floor = [sys.executable, "-c", f"import s3fs; s3fs.S3FileSystem().ls({output!r})"]
            found["figures"].append(figure("s3_client", runs, lambda: seconds_of(floor, env), shards=shards))
            local = local_copy(output, workdir / "status-local", broker_url)
            log(f"status and jobs x{runs}, the same job copied to local disk")
            found["figures"].append(figure("status_local", runs, lambda: seconds_of([script, "status", local], env),
                                           shards=shards))
            found["figures"].append(figure("jobs_local", runs, lambda: seconds_of([script, "jobs"], env), shards=shards))
    return found


def _unmeasured(name: str, exc: Exception, **fields: Any) -> dict[str, Any]:
    return {"name": name, "label": LABELS.get(name, name).format(**fields), "target": TARGETS.get(name),
            "samples": [], "median": None, "met": None, "load": [load_average()] * 2,
            "error": f"{type(exc).__name__}: {exc}"[:500], **fields}


def demo_sample(workdir: Path) -> float:
    return seconds_of([str(console_script()), "demo", "--workdir", str(fresh_output(workdir, "demo"))])


def hook_figures(workdir: Path, quick: bool, log: Log, hooks: dict[str, str] | None = None) -> dict[str, Any]:
    """Each hook module's ``figures(workdir, quick, log)``: a list of dicts with ``name``, ``value``,
    ``unit``, and optionally ``target``, ``better`` ("lower", the default, or "higher"), ``note``.
    A module not there yet, or without the function, is reported as not measured."""
    found: dict[str, Any] = {}
    for key, module_name in (HOOKS if hooks is None else hooks).items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            found[key] = {"module": module_name, "error": "not measured: module missing"}
            continue
        measure = getattr(module, HOOK_FUNCTION, None)
        if measure is None:
            found[key] = {"module": module_name, "error": f"not measured: {module_name} has no {HOOK_FUNCTION}()"}
            continue
        log(f"{module_name}.{HOOK_FUNCTION}()")
        if not quick:
            settle()
        try:
            figures = [_judged(f) for f in measure(workdir / key, quick, log)]
        except Exception as exc:  # one hook failing leaves the others' figures
            traceback.print_exc()
            found[key] = {"module": module_name, "error": f"not measured: {type(exc).__name__}: {exc}"[:500]}
            continue
        found[key] = {"module": module_name, "figures": figures}
    return found


def _judged(entry: dict[str, Any]) -> dict[str, Any]:
    value, target = entry.get("value"), entry.get("target")
    met = None
    if value is not None and target is not None:
        met = value >= target if entry.get("better") == "higher" else value <= target
    return {**entry, "met": met}


def run_startup(workdir: Path, quick: bool = False, runs: int | None = None, log: Log = _log,
                hooks: dict[str, str] | None = None) -> dict[str, Any]:
    runs = runs or (1 if quick else RUNS)
    workdir = workdir.resolve()
    spec_file = write_job(workdir)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "quick": quick, "runs": runs,
                               "cores": os.cpu_count(), "load_start": load_average(), "figures": []}
    log(f"--help and --version x{runs}")
    results["figures"] += cli_figures(runs)
    log(f"imports x{runs}, producer steps x{runs}")
    results["imports"] = _attempt(lambda: {"samples": import_samples(runs), "heaviest": heaviest_imports()})
    results["steps"] = _attempt(lambda: {"samples": step_samples(spec_file, runs)})
    if not quick:
        log(f"batchformers run x{runs}")
        results["figures"].append(figure("run", runs, lambda: run_sample(spec_file, workdir)))
        results["figures"].append(figure("model_stack", runs, lambda: seconds_of(MODEL_STACK, environment())))
        log(f"batchformers run on a warm pool x{runs} (each first run starts its own pool)")
        with WarmRuns(spec_file, workdir) as warm:
            results["figures"].append(figure("run_warm_first", runs, warm.first))
            results["figures"].append(figure("run_warm", runs, warm.again))
    log(f"instrumented run x{runs}")
    results["runs_instrumented"] = _attempt(lambda: [instrumented_run(spec_file, workdir) for _ in range(runs)])
    if quick:  # the instrumented run stands in for the console script's
        results["figures"].append(_instrumented_as_run(results["runs_instrumented"]))
    broker = broker_figures(spec_file, workdir, runs, QUICK_STATUS_SHARDS if quick else STATUS_SHARDS, log)
    results["figures"] += broker.pop("figures")
    results.update(broker)
    if not quick:
        log(f"batchformers demo x{runs}")
        results["figures"].append(figure("demo", runs, lambda: demo_sample(workdir)))
    results["breakdown"] = breakdown_table(results)
    results["hooks"] = ({key: {"module": name, "error": "not measured: --quick"} for key, name in HOOKS.items()}
                        if quick and hooks is None else hook_figures(workdir, quick, log, hooks))
    results["load_end"] = load_average()
    return results


def _attempt(measure: Callable[[], Any]) -> Any:
    try:
        return measure()
    except Exception as exc:  # the table says what could not be measured
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _instrumented_as_run(runs: Any) -> dict[str, Any]:
    """--quick: the run figure from the instrumented runs (there is no console-script run)."""
    samples = [r["steps"]["total (instrumented run)"] for r in runs] if isinstance(runs, list) else []
    median = statistics.median(samples) if samples else None
    return {"name": "run", "label": LABELS["run"] + " (instrumented run, --quick)", "target": TARGETS["run"],
            "samples": samples, "median": median, "met": None if median is None else median <= TARGETS["run"],
            "load": [load_average()] * 2, "error": runs.get("error") if isinstance(runs, dict) else None}


