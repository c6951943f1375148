"""A job's tail (``python -m bench --tail``): the three scenarios of issue 24, each on a private Redis
with real workers, ready before the clock starts (except in the spread: starting is its point).

1. Stragglers: a job of ``shards`` short shards on ``workers`` workers, one of them slowed 5x (the
   ``step-sleep`` test fault of :mod:`worker.faults`: every worker sleeps per step of 2 rows, the slowed
   one five times as long), so the slowed one runs a few of the job's shards (3 of 40 with 4 workers here);
   speculation (:mod:`jobs.speculation`, ``BATCHFORMERS_SPECULATE``) on and off: the job's wall time,
   the copies started and the shards started on the slowed worker (its ``count=PATH`` fault).
2. Preemption: one job of ``shards`` shards on ``workers`` workers, each step of ``PIECE_ROWS`` rows
   slowed ``STEP_SLEEP`` s, so a shard lasts about a second and a half. Once the first held shard has run
   three steps (and, with pieces, committed one), its worker gets SIGTERM: it drains (0.5 s), gives the
   shard back, and another worker resumes it. Pieces on (a piece every 0.5 s) and off (one commit at the
   shard's end): the seconds from SIGTERM to the shard's next start and the rows run twice (the
   ``steps=PATH`` fault records every step run).
3. Cold-start spread: two workers started together on a broker already holding two equal-priority jobs
   on two models (the tiny NER and classification fixtures), ``shards`` shards each: when the first job
   finishes, the share of the other's shards committed (near 100% when both progress evenly; issue 24
   found 48%, both workers on one job first), and the model loads in all, read from the workers' logs
   (:mod:`jobs.testing.worker_logs`; 2 is one per worker, issue 24 found 6).

Defaults keep the whole bench to a few minutes on two cores: short shards and short sleeps.
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
STEP_SLEEP = 0.2  # preemption: per step of PIECE_ROWS rows
PIECE_ROWS = 4
STRAGGLER_SLEEP, SLOWDOWN = 0.25, 5  # stragglers: per step of 2 rows on a normal worker; the slowed one's factor
SPREAD_SLEEP = 0.1  # cold-start spread: every shard sleeps this long before its commit
BEFORE = {"share_at_first_finish": 0.48, "loads": 6}  # issue 24, two workers on two 40-shard jobs, before spread


def _log(message: str) -> None:
    import sys

    print(f"{time.strftime('%H:%M:%S')} [tail] {message}", file=sys.stderr, flush=True)


def _input(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "text": [f"day {i} in Paris" for i in range(rows)]}),
                   path)


def _wait_ready(log_dirs: list[Path], count: int) -> None:
    """Until ``count`` worker logs under ``log_dirs`` say the worker is ready (imports done, consuming)."""
    from tests.reliability import wait_until

    def ready() -> bool:
        logs = [log for folder in log_dirs for log in folder.glob("*.log")]
        return sum(" ready." in log.read_text(errors="replace") for log in logs) >= count

    wait_until(ready, 180, f"{count} workers ready")


def _steps(path: Path) -> list[tuple[int, int, int, int, float]]:
    """(shard, start, stop, pid, time) of every step run, from the ``steps=PATH`` fault."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(a), int(b), int(c), int(d), float(e)) for a, b, c, d, e in (line.split() for line in lines)]


def run_once(pieces: bool, workdir: Path, workers: int, shards: int, shard_rows: int) -> dict[str, Any]:
    """Preemption: SIGTERM of the worker holding the job's first running shard, once it is mid-shard."""
    from jobs.io.layout import OutputLayout
    from jobs.io.pieces import ShardPieces
    from jobs.settings import Settings
    from producer.embedded import EmbeddedRedis, LocalWorkers
    from producer.submit import submit
    from tests.reliability import first_held_shard, tokenize_spec, wait_until, worker_number
    from worker.faults import FAULTS_ENV

    label = "on" if pieces else "off"
    run_dir = workdir / f"tail-{label}-{uuid.uuid4().hex[:6]}"
    _input(run_dir / "in.parquet", shards * shard_rows)
    steps = run_dir / "steps.txt"
    env = {"BATCHFORMERS_LEASE_SECONDS": "10", "BATCHFORMERS_TORCH_THREADS": "1", "BATCHFORMERS_DRAIN_SECONDS": "0.5",
           "BATCHFORMERS_PIECE_ROWS": str(PIECE_ROWS), "BATCHFORMERS_PIECE_SECONDS": "0.5" if pieces else "3600",
           FAULTS_ENV: f"step-sleep={STEP_SLEEP},steps={steps}"}
    queue = f"bf-tail-bench-{uuid.uuid4().hex[:6]}"
    with EmbeddedRedis(persist=False) as server:
        settings = Settings(broker_url=server.url, queue=queue, lease_seconds=10)
        with LocalWorkers(server.url, count=workers, queue=queue, log_dir=str(run_dir / "logs"),
                          extra_env=env) as local:
            _wait_ready([run_dir / "logs"], workers)
            started = time.perf_counter()
            spec = tokenize_spec(run_dir / "in.parquet", run_dir / "out", shard_rows=shard_rows)
            output = submit(spec, settings).output
            job_id = OutputLayout(output).read_manifest().job_id
            shard, holder, _ = first_held_shard(server.url, job_id)
            wait_until(lambda: sum(step[0] == shard for step in _steps(steps)) >= 3 and (
                not pieces or ShardPieces(OutputLayout(output), shard).claims()), 60, "a piece")
            victim = local.processes[worker_number(holder)]
            victim.send_signal(signal.SIGTERM)
            stopped_at = time.time()
            wait_until(lambda: OutputLayout(output).is_complete(), JOB_TIMEOUT, f"pieces {label}: the job")
            wall = time.perf_counter() - started
            local.kill()  # idle now: no graceful stop to wait for
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


def run_straggler(speculate: bool, workdir: Path, workers: int, shards: int, shard_rows: int = 8) -> dict[str, Any]:
    """Stragglers: ``workers`` workers, one slowed ``SLOWDOWN`` times, all ready before the submit."""
    from jobs.io.layout import OutputLayout
    from jobs.settings import Settings
    from producer.embedded import EmbeddedRedis, LocalWorkers
    from producer.status import job_status
    from producer.submit import submit
    from tests.reliability import starts, tokenize_spec, wait_until
    from worker.faults import FAULTS_ENV

    label = "on" if speculate else "off"
    run_dir = workdir / f"straggler-{label}-{uuid.uuid4().hex[:6]}"
    _input(run_dir / "in.parquet", shards * shard_rows)
    env = {"BATCHFORMERS_LEASE_SECONDS": "4", "BATCHFORMERS_TORCH_THREADS": "1", "BATCHFORMERS_PIECE_ROWS": "2",
           "BATCHFORMERS_PIECE_SECONDS": "0.5", "BATCHFORMERS_SPECULATE": "1" if speculate else "0",
           "BATCHFORMERS_SPECULATE_AFTER_SECONDS": "1"}
    slow_starts = run_dir / "slow-starts.txt"
    queue = f"bf-tail-bench-{uuid.uuid4().hex[:6]}"
    with EmbeddedRedis(persist=False) as server:
        settings = Settings(broker_url=server.url, queue=queue, lease_seconds=4)
        with LocalWorkers(server.url, count=1, queue=queue, log_dir=str(run_dir / "slow"), extra_env={
                **env, FAULTS_ENV: f"step-sleep={STRAGGLER_SLEEP * SLOWDOWN},count={slow_starts}"}) as slow, \
                LocalWorkers(server.url, count=workers - 1, queue=queue, log_dir=str(run_dir / "normal"),
                             extra_env={**env, FAULTS_ENV: f"step-sleep={STRAGGLER_SLEEP}"}) as normal:
            _wait_ready([run_dir / "slow", run_dir / "normal"], workers)
            started = time.perf_counter()
            output = submit(tokenize_spec(run_dir / "in.parquet", run_dir / "out", shard_rows=shard_rows),
                            settings).output
            wait_until(lambda: OutputLayout(output).is_complete(), JOB_TIMEOUT, "the job")
            wall = time.perf_counter() - started
            copies = job_status(output, settings).copies
            slow.kill()
            normal.kill()
    on_slowed = len(starts(slow_starts))
    result = {"speculation": label, "workers": workers, "shards": shards, "shard_rows": shard_rows,
              "wall_seconds": wall, "copies": copies, "shards_on_slowed_worker": on_slowed,
              "slow_shard_seconds": shard_rows / 2 * STRAGGLER_SLEEP * SLOWDOWN}
    _log(f"speculation {label}: job {wall:.1f}s, {copies} copies, {on_slowed} shards started on the slowed worker")
    return result


def run_spread(workdir: Path, shards: int, shard_rows: int = 4) -> dict[str, Any]:
    """Cold-start spread: two jobs on two models queued, then two workers started together."""
    from jobs.io.layout import OutputLayout
    from jobs.ledger import marker_times
    from jobs.settings import Settings
    from jobs.spec import load_spec
    from jobs.testing.worker_logs import histories
    from producer.embedded import EmbeddedRedis, LocalWorkers
    from producer.submit import submit
    from tests.models import tiny_model_path
    from tests.reliability import wait_until
    from worker.faults import FAULTS_ENV

    run_dir = workdir / f"spread-{uuid.uuid4().hex[:6]}"
    _input(run_dir / "in.parquet", shards * shard_rows)
    base = {"input": str(run_dir / "in.parquet"), "columns": {"id": "id"}, "shard_rows": shard_rows}
    specs = [load_spec({**base, "task": task, "model": str(tiny_model_path(model)), "output": str(run_dir / task)})
             for task, model in (("ner", "bert-ner"), ("classification", "bert-classifier"))]
    env = {"BATCHFORMERS_LEASE_SECONDS": "60", "BATCHFORMERS_TORCH_THREADS": "1", FAULTS_ENV: f"sleep={SPREAD_SLEEP}"}
    queue = f"bf-tail-bench-{uuid.uuid4().hex[:6]}"
    with EmbeddedRedis(persist=False) as server:
        settings = Settings(broker_url=server.url, queue=queue, lease_seconds=60)
        outputs = [submit(spec, settings).output for spec in specs]  # both queued before any worker
        started = time.perf_counter()
        with LocalWorkers(server.url, count=2, queue=queue, log_dir=str(run_dir / "logs"), extra_env=env) as local:
            wait_until(lambda: all(OutputLayout(o).is_complete() for o in outputs), JOB_TIMEOUT, "both jobs")
            wall = time.perf_counter() - started
            local.kill()
    commits = [sorted(marker_times(m)[1] for m in OutputLayout(o).committed().values()) for o in outputs]
    first_finish = min(times[-1] for times in commits)
    other = max(commits, key=lambda times: times[-1])
    share = sum(t <= first_finish for t in other) / shards
    found = histories(run_dir / "logs")
    loads = sum(len(models) for models, _ in found)
    split = len({jobs[0] for _, jobs in found if jobs}) == 2
    rows = [OutputLayout(o).completion() or {} for o in outputs]
    result = {"workers": 2, "jobs": 2, "shards": shards, "shard_rows": shard_rows, "share_at_first_finish": share,
              "loads": loads, "first_shards_on_both_jobs": split, "wall_seconds": wall,
              "rows": [r.get("rows") for r in rows]}
    _log(f"spread: {share:.0%} of the other job committed when the first finished, {loads} model loads, "
         f"both jobs from the first shard: {split}; {wall:.1f}s from the workers' start")
    return result


def run_tail(workdir: Path, workers: int = 4, shards: int = 40, shard_rows: int = 32) -> dict[str, Any]:
    stragglers = [run_straggler(speculate, workdir, workers, shards) for speculate in (True, False)]
    runs = [run_once(pieces, workdir, workers, shards, shard_rows) for pieces in (True, False)]
    spread = run_spread(workdir, shards)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": round(os.getloadavg()[0], 2),
            "stragglers": stragglers, "runs": runs, "spread": spread}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Issue 24's scenarios ({results['date']}, `python -m bench --tail`). Indicative: measured on a "
             f"shared machine (load average {results.get('load_average', '?')}).", ""]
    if results.get("stragglers"):
        first = results["stragglers"][0]
        slow = first.get("slow_shard_seconds", 0.0)
        lines += [f"Stragglers: a job of {first['shards']} shards of {first.get('shard_rows', 8)} rows on "
                  f"{first.get('workers', 2)} workers, one slowed {SLOWDOWN}x (each step of 2 rows sleeps "
                  f"{STRAGGLER_SLEEP} s, {STRAGGLER_SLEEP * SLOWDOWN:g} s there: a shard takes {slow:g} s on it):", "",
                  "| speculation | job wall (s) | copies started | shards started on the slowed worker |",
                  "|---|---:|---:|---:|"]
        for run in results["stragglers"]:
            lines.append(f"| {run['speculation']} | {run['wall_seconds']:.1f} | {run['copies']} | "
                         f"{run.get('shards_on_slowed_worker', '-')} |")
        lines.append("")
    first = results["runs"][0]
    lines += [f"Preemption: SIGTERM of one of {first['workers']} workers mid-shard ({first['shards']} shards of "
              f"{first['shard_rows']} rows, each step of {PIECE_ROWS} rows slowed {STEP_SLEEP} s, drain 0.5 s):", "",
              "| pieces | shard running again after SIGTERM (s) | rows of the shard redone | job wall (s) |",
              "|---|---:|---:|---:|"]
    for run in results["runs"]:
        restart = "-" if run["restart_seconds"] is None else f"{run['restart_seconds']:.1f}"
        lines.append(f"| {run['pieces']} | {restart} | {run['rows_redone']} | {run['wall_seconds']:.1f} |")
    spread = results.get("spread")
    if spread:
        lines += ["", f"Cold-start spread: two workers started together on two queued equal-priority jobs on two "
                  f"models (tiny NER and classifier), {spread['shards']} shards each:", "",
                  "| | other job's shards committed when the first finished | model loads in all |",
                  "|---|---:|---:|",
                  f"| before (issue 24, 40 shards each) | {BEFORE['share_at_first_finish']:.0%} | {BEFORE['loads']} |",
                  f"| now | {spread['share_at_first_finish']:.0%} | {spread['loads']} |"]
    return "\n".join(lines) + "\n"
