"""Per-shard overhead: what a shard costs beyond its model, and how many Redis round trips it makes.

Between two shards of the same job on one worker, everything but the model's work is overhead:
the task's marker checks, the lease, the delivery count, the ledger, the input check, loading
the (cached) runner, reading the rows, writing the part and its marker, counting the commit,
the progress report. :func:`measure_overhead` runs a job of many tiny shards (NER on the tiny
fixture model) through the worker's own shard task, one shard after another in one fresh
process, against a private Redis server, and reports per shard (after a first, warming shard):

- ``overhead_ms``: the shard's wall time less its ``run_table`` (the model's) time, median, and
  ``overhead_cpu_ms`` the same in CPU time of the process (steadier than wall time on shared cores);
- ``round_trips``: Redis requests the process sent (a pipeline or a script is one), and
  ``commands``: what the server executed for them (a script's own calls included), by name.

The task runs eagerly (``Task.apply``), so Celery's own per-message traffic (fetch, ack, events,
the STARTED and SUCCESS results) is not in it; everything batchformers does per shard is.
Round trips are counted by wrapping redis-py's ``Connection.send_packed_command`` in that
process, commands from the server's ``INFO commandstats``. Target: <= 50 ms on
local disk. ``python -m bench.overhead`` prints the dict as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "models" / "bert-ner"
SHARDS = 40
QUICK_SHARDS = 10
ROWS_PER_SHARD = 2
TARGET_MS = 50.0
TIMEOUT = 600.0
INFO_COMMANDS = ("info",)  # the measurement's own commands, left out of the counts


def measure_overhead(shards: int = SHARDS, rows_per_shard: int = ROWS_PER_SHARD,
                     workdir: Path | None = None) -> dict[str, Any]:
    """Per-shard overhead (ms) and Redis round trips of ``shards`` shards, in a fresh process."""
    from producer.embedded import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="batchformers-overhead-") as scratch, \
            EmbeddedRedis(persist=False) as server:
        directory = Path(workdir) if workdir else Path(scratch)
        if workdir:  # each measurement is a new job: an earlier run's output would hold another input's job
            shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "BATCHFORMERS_BROKER_URL": server.url, "BATCHFORMERS_TORCH_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "bench.overhead", str(directory), str(shards), str(rows_per_shard)]
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"overhead measurement failed:\n{done.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def _in_this_process(directory: Path, shards: int, rows_per_shard: int) -> dict[str, Any]:
    """The measurement itself: BATCHFORMERS_BROKER_URL names the private server (set before worker.app)."""
    from jobs.broker import client
    from worker.app import _limit_threads

    _limit_threads()  # what a pool process does after the fork (worker_process_init), before torch is imported

    from bench.data import text_rows, write_parquet
    from jobs.dispatch import messages_for
    from jobs.spec import load_spec
    from producer.submit import prepare

    source = write_parquet({"text": text_rows(shards * rows_per_shard)}, directory / "input.parquet")
    spec = load_spec({"task": "ner", "model": str(MODEL), "input": str(source), "columns": {"id": "id"},
                      "output": str(directory / "out"), "shard_rows": rows_per_shard, "device": "cpu"})
    manifest, layout = prepare(spec)
    messages = messages_for(manifest, layout)
    server = client(os.environ["BATCHFORMERS_BROKER_URL"])
    with counting_round_trips() as trips:
        per_shard = _run_shards(messages, trips, server)
    commands_by_name: Counter[str] = Counter()
    for shard in per_shard:
        commands_by_name.update(shard["commands"])
    measured = len(per_shard)
    return {
        "shards": shards,
        "rows_per_shard": rows_per_shard,
        "complete": layout.is_complete(),
        "overhead_ms": statistics.median(s["overhead_ms"] for s in per_shard),
        "overhead_ms_max": max(s["overhead_ms"] for s in per_shard),
        "overhead_cpu_ms": statistics.median(s["overhead_cpu_ms"] for s in per_shard),
        "round_trips": statistics.median(s["round_trips"] for s in per_shard),
        "commands": statistics.median(sum(s["commands"].values()) for s in per_shard),
        "commands_by_name": {name: count / measured for name, count in sorted(commands_by_name.items())},
        "target_ms": TARGET_MS,
        "load_average": os.getloadavg()[0],
    }


def _run_shards(messages: list[Any], trips: dict[str, int], server: Any) -> list[dict[str, Any]]:
    """Each shard through the worker's task, one after another; what each cost beyond its model."""
    from worker import runners
    from worker.tasks import run_shard_task

    run_shard_task.apply(args=[messages[0].to_dict()]).get()  # loads the model, connects, warms every path
    model_wall, model_cpu = _time_run_table(runners)
    per_shard: list[dict[str, Any]] = []
    for message in messages[1:]:
        before_commands, before_trips = _commands(server), trips["count"]
        before_wall, before_cpu = sum(model_wall), sum(model_cpu)
        wall, cpu = time.perf_counter(), time.process_time()
        run_shard_task.apply(args=[message.to_dict()]).get()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sent = trips["count"] - before_trips
        per_shard.append({"overhead_ms": (wall - sum(model_wall) + before_wall) * 1000,
                          "overhead_cpu_ms": (cpu - sum(model_cpu) + before_cpu) * 1000,
                          "round_trips": sent, "commands": _commands(server) - before_commands})
    return per_shard


@contextmanager
def counting_round_trips() -> Iterator[dict[str, int]]:
    """Count every request this process sends to Redis while the block runs (a pipeline or a script is one)."""
    from redis.connection import AbstractConnection

    counted = {"count": 0}
    send = AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        counted["count"] += 1
        send(self, command, check_health)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        yield counted
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]


def _time_run_table(runners: Any) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of every ``run_table`` call of the loaded runner (the model's share of a shard)."""
    wall: list[float] = []
    cpu: list[float] = []
    for _, runner in runners._cache.values():
        run_table = runner.run_table

        def timed(*args: Any, _run: Any = run_table, **kwargs: Any) -> Any:
            started, used = time.perf_counter(), time.process_time()
            try:
                return _run(*args, **kwargs)
            finally:
                wall.append(time.perf_counter() - started)
                cpu.append(time.process_time() - used)

        runner.run_table = timed
    return wall, cpu


def _commands(server: Any) -> Counter[str]:
    """Commands the server has executed so far, by name (the measurement's own left out)."""
    stats = server.info("commandstats")
    counts = Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()})
    for name in INFO_COMMANDS:
        counts.pop(name, None)
    return counts


def figures(workdir: Path, quick: bool, log: Any) -> list[dict[str, Any]]:
    """Issue 21's figures for ``python -m bench --startup``: the overhead against its target, the round trips."""
    result = measure_overhead(shards=QUICK_SHARDS if quick else SHARDS, workdir=workdir)
    log(f"per-shard overhead: {result}")
    note = (f"{result['shards']} shards of {result['rows_per_shard']} rows, in process (Celery's own traffic "
            f"not included), load {result['load_average']:.1f}")
    return [
        {"name": "per-shard overhead (wall)", "value": result["overhead_ms"], "unit": "ms", "target": TARGET_MS,
         "note": note},
        {"name": "per-shard overhead (CPU)", "value": result["overhead_cpu_ms"], "unit": "ms", "note": note},
        {"name": "Redis round trips per shard", "value": result["round_trips"], "unit": "", "note": note},
        {"name": "Redis commands per shard", "value": result["commands"], "unit": "", "note": note},
    ]


def markdown(result: dict[str, Any]) -> str:
    """One table row: the overhead against its target, with the round trips."""
    return (f"| per-shard overhead | {result['overhead_ms']:.1f} ms (CPU {result['overhead_cpu_ms']:.1f} ms) "
            f"| <= {result['target_ms']:.0f} ms | {result['round_trips']:.0f} Redis round trips, "
            f"{result['commands']:.0f} commands per shard |\n")


if __name__ == "__main__":
    print(json.dumps(_in_this_process(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
