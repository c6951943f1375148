"""A job's tail when a machine goes away (``python -m bench --tail``): SIGTERM of one worker mid-job.

A private Redis, ``workers`` warm workers (one more than the job's shards, so one is idle) and one job of long shards (tokenize on the tiny model, each
step of ``BATCHFORMERS_PIECE_ROWS`` rows slowed by the ``step-sleep`` test fault, so a shard lasts
seconds). Once the first shard has committed a piece, its worker gets SIGTERM: it drains (0.5 s),
gives the shard back, and another worker resumes it. Run twice, pieces on (a piece every 0.5 s) and off
(one commit at the shard's end); reported: the seconds from SIGTERM to the shard's next start, the rows
run twice (the ``steps=PATH`` fault records every step run) and the job's wall time.

Then stragglers: one slowed worker and one normal, a job of short shards, speculation on and off
(:mod:`jobs.speculation`): the job's wall time and the copies started. Not measured here: the
cold-start spread (``tests/worker/test_spread.py`` checks it).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

JOB_TIMEOUT = 300.0
STEP_SLEEP = 0.25
PIECE_ROWS = 4


def _log(message: str) -> None:
    import sys

    print(f"{time.strftime('%H:%M:%S')} [tail] {message}", file=sys.stderr, flush=True)


def _steps(path: Path) -> list[tuple[int, int, int, int, float]]:
    """(shard, start, stop, pid, time) of every step run, from the ``steps=PATH`` fault."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(a), int(b), int(c), int(d), float(e)) for a, b, c, d, e in (line.split() for line in lines)]


def run_once(pieces: bool, workdir: Path, workers: int, shards: int, shard_rows: int) -> dict[str, Any]:
    from jobs.io.layout import OutputLayout
    from jobs.io.pieces import ShardPieces
    from jobs.settings import Settings
    from producer.embedded import EmbeddedRedis, LocalWorkers
    from producer.submit import submit
    from tests.reliability import first_held_shard, tokenize_spec, wait_until, worker_number
    from worker.faults import FAULTS_ENV

    label = "on" if pieces else "off"
    run_dir = workdir / f"tail-{label}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    rows = shards * shard_rows
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "text": [f"day {i} in Paris" for i in range(rows)]}),
                   run_dir / "in.parquet")
    steps = run_dir / "steps.txt"
    env = {"BATCHFORMERS_LEASE_SECONDS": "10", "BATCHFORMERS_TORCH_THREADS": "1", "BATCHFORMERS_DRAIN_SECONDS": "0.5",
           "BATCHFORMERS_PIECE_ROWS": str(PIECE_ROWS), "BATCHFORMERS_PIECE_SECONDS": "0.5" if pieces else "3600",
           FAULTS_ENV: f"step-sleep={STEP_SLEEP},steps={steps}"}
    queue = f"bf-tail-bench-{uuid.uuid4().hex[:6]}"
    with EmbeddedRedis(persist=False) as server:
        settings = Settings(broker_url=server.url, queue=queue, lease_seconds=10)
        with LocalWorkers(server.url, count=workers, queue=queue, log_dir=str(run_dir / "logs"),
                          extra_env=env) as local:
            started = time.perf_counter()
            spec = tokenize_spec(run_dir / "in.parquet", run_dir / "out", shard_rows=shard_rows)
            output = submit(spec, settings).output
            job_id = OutputLayout(output).read_manifest().job_id
            shard, holder, _ = first_held_shard(server.url, job_id)
            wait_until(lambda: len(_steps(steps)) >= 3 and (not pieces or ShardPieces(OutputLayout(output), shard)
                                                             .claims()), 60, "a piece")
            victim = local.processes[worker_number(holder)]
            victim.send_signal(signal.SIGTERM)
            stopped_at = time.time()
            deadline = time.monotonic() + JOB_TIMEOUT
            while not OutputLayout(output).is_complete():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pieces {label}: the job did not finish in {JOB_TIMEOUT:.0f}s")
                time.sleep(0.1)
            wall = time.perf_counter() - started
    run = [step for step in _steps(steps) if step[0] == shard]
    victim_pid = run[0][3]
    again = [step for step in run if step[3] != victim_pid]
    redone = sum(step[2] - step[1] for step in run) - shard_rows
    restart = again[0][4] - stopped_at if again else None
    result = {"pieces": label, "workers": workers, "shards": shards, "shard_rows": shard_rows,
              "restart_seconds": restart, "rows_redone": redone, "wall_seconds": wall}
    _log(f"pieces {label}: shard {shard} running again {restart if restart is None else round(restart, 2)}s after "
         f"SIGTERM, {redone} of its {shard_rows} rows redone; job {wall:.1f}s")
    return result


def run_straggler(speculate: bool, workdir: Path, shards: int = 20, shard_rows: int = 8) -> dict[str, Any]:
    """One slowed worker (each step of 2 rows sleeps 3 s) and one normal, ready before the submit."""
    from jobs.io.layout import OutputLayout
    from jobs.settings import Settings
    from producer.embedded import EmbeddedRedis, LocalWorkers
    from producer.status import job_status
    from producer.submit import submit
    from tests.reliability import tokenize_spec, wait_until
    from worker.faults import FAULTS_ENV

    label = "on" if speculate else "off"
    run_dir = workdir / f"straggler-{label}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    rows = shards * shard_rows
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "text": [f"day {i} in Paris" for i in range(rows)]}),
                   run_dir / "in.parquet")
    env = {"BATCHFORMERS_LEASE_SECONDS": "4", "BATCHFORMERS_TORCH_THREADS": "1", "BATCHFORMERS_PIECE_ROWS": "2",
           "BATCHFORMERS_PIECE_SECONDS": "0.5", "BATCHFORMERS_SPECULATE": "1" if speculate else "0",
           "BATCHFORMERS_SPECULATE_AFTER_SECONDS": "1"}
    queue = f"bf-tail-bench-{uuid.uuid4().hex[:6]}"
    with EmbeddedRedis(persist=False) as server:
        settings = Settings(broker_url=server.url, queue=queue, lease_seconds=4)
        with LocalWorkers(server.url, count=1, queue=queue, log_dir=str(run_dir / "slow"),
                          extra_env={**env, FAULTS_ENV: "step-sleep=3"}), \
                LocalWorkers(server.url, count=1, queue=queue, log_dir=str(run_dir / "normal"), extra_env=env):
            for logs in ("slow", "normal"):
                wait_until(lambda logs=logs: " ready." in "".join(  # type: ignore[misc]
                    p.read_text(errors="replace") for p in (run_dir / logs).glob("*.log")), 120, "workers")
            started = time.perf_counter()
            output = submit(tokenize_spec(run_dir / "in.parquet", run_dir / "out", shard_rows=shard_rows),
                            settings).output
            wait_until(lambda: OutputLayout(output).is_complete(), JOB_TIMEOUT, "the job")
            wall = time.perf_counter() - started
            copies = job_status(output, settings).copies
    result = {"speculation": label, "shards": shards, "wall_seconds": wall, "copies": copies,
              "slow_shard_seconds": shard_rows / 2 * 3.0}
    _log(f"speculation {label}: job {wall:.1f}s, {copies} copies")
    return result


def run_tail(workdir: Path, workers: int = 3, shards: int = 2, shard_rows: int = 40) -> dict[str, Any]:
    runs = [run_once(pieces, workdir, workers, shards, shard_rows) for pieces in (True, False)]
    stragglers = [run_straggler(speculate, workdir) for speculate in (True, False)]
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": round(os.getloadavg()[0], 2), "runs": runs,
            "stragglers": stragglers}


def markdown(results: dict[str, Any]) -> str:
    first = results["runs"][0]
    lines = [f"SIGTERM of one of {first['workers']} workers mid-shard ({first['shards']} shards of "
             f"{first['shard_rows']} rows, each step of {PIECE_ROWS} rows slowed {STEP_SLEEP} s; "
             f"{results['date']}, `python -m bench --tail`). Indicative: measured on a shared machine "
             f"(load average {results.get('load_average', '?')}).", "",
             "| pieces | shard running again after SIGTERM (s) | rows of the shard redone | job wall (s) |",
             "|---|---:|---:|---:|"]
    for run in results["runs"]:
        restart = "-" if run["restart_seconds"] is None else f"{run['restart_seconds']:.1f}"
        lines.append(f"| {run['pieces']} | {restart} | {run['rows_redone']} | {run['wall_seconds']:.1f} |")
    if results.get("stragglers"):
        lines += ["", f"One of two workers slowed (each of its steps of 2 rows sleeps 3 s: a shard of 8 rows takes "
                  f"12 s there, ~0.1 s on the other), a job of {results['stragglers'][0]['shards']} shards:", "",
                  "| speculation | job wall (s) | copies started |", "|---|---:|---:|"]
        for run in results["stragglers"]:
            lines.append(f"| {run['speculation']} | {run['wall_seconds']:.1f} | {run['copies']} |")
    return "\n".join(lines) + "\n"
