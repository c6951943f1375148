"""Start-up: what a small job, ``submit`` and ``status`` cost before any real work (``python -m bench --startup``).

Every figure is the median of ``runs`` fresh processes (issue 21), printed with the load
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
  a job with 5,000 commit markers on a moto S3 server (built by :func:`bench.scale.status_at_scale`),
  ``--help``, ``--version``, and ``batchformers demo`` in a fresh work directory;
- the other helpers' measurements, through :data:`HOOKS` (see :func:`hook_figures`).

A step that cannot be measured says why in the table instead of showing a number.
``--quick`` (one process each, 20 markers, one instrumented run, no demo, no hooks) only
checks that the bench works: tests/test_bench_quick.py asserts the report's shape, never a time.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "models" / "bert-ner"
NEWS = ROOT / "examples" / "data" / "news.parquet"
RUN_ROWS = 50
RUNS = 5
STATUS_SHARDS = 5000
QUICK_STATUS_SHARDS = 20
COMMAND_TIMEOUT = 600.0
HEAVY_MODULES = ("torch", "transformers", "datasets", "pandas")

TARGETS: dict[str, float | None] = {
    "run": 5.0, "submit": 1.5, "status": 0.5, "jobs": 0.5, "status_local": 0.5, "jobs_local": 0.5, "help": 0.3, "version": None, "demo": 10.0,
}
"""Seconds each command may take (issue 21); None: reported, no target."""
LABELS = {
    "run": f"`batchformers run`, {RUN_ROWS}-row NER, tiny model", "submit": "`batchformers submit` (local model, broker up)",
    "status": "`batchformers status` at {shards:,} shards (S3)", "jobs": "`batchformers jobs` at {shards:,} shards (S3)",
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
    "overhead": "bench.overhead",  # per-shard overhead ms, Redis round trips per shard (issue 21, H4)
    "reads": "bench.reads",  # bytes read per shard vs its share, 1M-row Arrow and Parquet on moto S3 (H3)
    "host": "bench.host",  # the host path through `run` vs one raw tokenizer call (H4)
}
"""Other measurements of issue 21: each module exposes ``figures(workdir, quick, log) -> list[dict]``."""
HOOK_FUNCTION = "figures"
QUIET_LOAD = 1.5  # figures are taken below this load average (1 min) ...
SETTLE_SECONDS = 120.0  # ... waiting at most this long for it

Log = Callable[[str], None]


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [startup] {message}", file=sys.stderr, flush=True)


def load_average() -> float:
    return os.getloadavg()[0]


def console_script() -> Path:
    """The venv's ``batchformers`` (next to this interpreter), as a user would run it."""
    return Path(sys.executable).parent / "batchformers"


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without a broker (``run`` brings its own), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("BATCHFORMERS_BROKER_URL", "BATCHFORMERS_QUEUE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return {**env, **extra}


def timed_command(command: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds of ``command`` from start to exit, and what it printed."""
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env or environment(), cwd=ROOT,
                          timeout=COMMAND_TIMEOUT)
    return time.perf_counter() - began, done


def checked(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, done.args[:3]))} ... exited {done.returncode}: "
                           f"{(done.stderr or done.stdout)[-2000:]}")
    return done


# ---- figures: a median of fresh processes, beside its target ----

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
    return [figure(name, runs, lambda flag=flag: _seconds([script, flag]))
            for name, flag in (("help", "--help"), ("version", "--version"))]


def _seconds(command: list[str], env: dict[str, str] | None = None) -> float:
    seconds, done = timed_command(command, env)
    checked(done)
    return seconds


# ---- the job every run, submit and step uses ----

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


def fresh_output(workdir: Path, name: str) -> Path:
    path = workdir / "out" / f"{name}-{uuid.uuid4().hex[:8]}"
    shutil.rmtree(path, ignore_errors=True)
    return path


# ---- imports and the producer's steps, each in a fresh interpreter ----

IMPORT_PROBE = """
import json, sys, time
began = time.perf_counter()
import producer.cli
cli = time.perf_counter()
import producer.run
done = time.perf_counter()
print(json.dumps({"producer.cli": cli - began, "producer.run": done - cli,
                  "heavy": sorted(m for m in %r if m in sys.modules)}))
"""


def import_samples(runs: int) -> list[dict[str, Any]]:
    code = IMPORT_PROBE % (HEAVY_MODULES,)
    return [json.loads(checked(timed_command([sys.executable, "-c", code])[1]).stdout.strip().splitlines()[-1])
            for _ in range(runs)]


def heaviest_imports(limit: int = 12) -> list[dict[str, Any]]:
    """The heaviest entries of ``import producer.cli``'s import tree (``-X importtime``, one process)."""
    done = checked(timed_command([sys.executable, "-X", "importtime", "-c", "import producer.cli"])[1])
    return [e for e in parse_importtime(done.stderr) if e["module"] != "producer.cli"][:limit]


def parse_importtime(text: str) -> list[dict[str, Any]]:
    """Every module of ``-X importtime`` output with its cumulative and own seconds and its depth in the
    tree, heaviest (cumulative) first."""
    found = []
    for line in text.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "cumulative" in line:
            continue
        with contextlib.suppress(ValueError):
            found.append({"module": parts[2].strip(), "seconds": int(parts[1]) / 1e6,
                          "self": int(parts[0].removeprefix("import time:")) / 1e6,
                          "depth": (len(parts[2]) - len(parts[2].lstrip()) - 1) // 2})
    return sorted(found, key=lambda entry: -entry["seconds"])


STEP_NAMES = ("producer imports", "spec load", "model check", "pin", "plan")


def step_samples(spec_file: Path, runs: int) -> list[dict[str, Any]]:
    samples = []
    for _ in range(runs):
        done = checked(timed_command([sys.executable, "-m", "bench.startup", "steps", str(spec_file)])[1])
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return samples


def _steps(spec_file: str) -> dict[str, Any]:
    """In a fresh process: the producer's steps of a submit, one public function each, timed."""
    timings: dict[str, Any] = {"errors": {}}
    began = time.perf_counter()
    from jobs.spec import load_spec
    from producer.model_check import check_model
    from producer.pin import resolve_pin
    from producer.plan import build_manifest

    timings["producer imports"] = time.perf_counter() - began
    spec: Any = None
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("spec load", lambda: load_spec(spec_file)), ("model check", lambda: check_model(spec)),
        ("pin", lambda: resolve_pin(spec)), ("plan", lambda: build_manifest(spec)),
    ]
    for name, call in steps:
        began = time.perf_counter()
        try:
            value = call()
        except Exception as exc:  # measured by its absence: the table says why
            timings["errors"][name] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        timings[name] = time.perf_counter() - began
        if name == "spec load":
            spec = value
    timings["heavy"] = sorted(m for m in HEAVY_MODULES if m in sys.modules)
    return timings


# ---- batchformers run: the console script's wall, and an instrumented run's breakdown ----

def run_sample(spec_file: Path, workdir: Path) -> float:
    output = fresh_output(workdir, "run")
    seconds = _seconds([str(console_script()), "run", str(spec_file), "--output", str(output), "--no-progress"])
    return seconds


def instrumented_run(spec_file: Path, workdir: Path) -> dict[str, Any]:
    """One ``run`` in a fresh process with its steps timed and its worker logs kept (see :func:`_drive_run`)."""
    output = fresh_output(workdir, "breakdown")
    keep = workdir / "logs" / output.name
    keep.mkdir(parents=True, exist_ok=True)
    spawned = time.time()
    seconds, done = timed_command([sys.executable, "-m", "bench.startup", "drive-run", str(spec_file), str(output),
                                   str(keep)])
    checked(done)
    events = json.loads((keep / "events.json").read_text())
    return breakdown(events, keep, output, spawned, seconds)


def _drive_run(spec_file: str, output: str, keep: str) -> int:
    """In a fresh process: the CLI's ``run`` with timing wrappers on what it starts and stops."""
    events: list[dict[str, Any]] = []
    imported = time.time()
    from producer import cli, embedded

    with contextlib.suppress(ImportError):  # the run command's module (producer.run is also a function's name)
        _wrap(importlib.import_module("producer.run"), "submit", "submit", events)
    _wrap(embedded.EmbeddedRedis, "start", "redis start", events)
    _wrap(embedded.EmbeddedRedis, "stop", "redis stop", events)
    _wrap(embedded.LocalWorkers, "spawn", "worker spawn", events)

    def keep_logs(args: tuple[Any, ...]) -> None:  # the CLI removes its log folder after a complete job
        folder = getattr(args[0], "log_dir", None)
        for log in Path(folder).glob("*.log") if folder else ():
            shutil.copy(log, Path(keep) / log.name)

    _wrap(embedded.LocalWorkers, "stop", "workers stop", events, after=keep_logs)
    _wrap(embedded.LocalWorkers, "kill", "workers stop", events, after=keep_logs)  # a finished job's quick end
    began = time.time()
    code = cli.main(["run", spec_file, "--output", output, "--no-progress"])
    ended = time.time()
    Path(keep, "events.json").write_text(json.dumps({"imported": imported, "main": [began, ended], "code": code,
                                                     "events": events}))
    return code


def _wrap(owner: Any, name: str, step: str, events: list[dict[str, Any]],
          after: Callable[[tuple[Any, ...]], None] | None = None) -> None:
    """Record the begin and end of each call of ``owner.name`` (when it exists) as ``step``."""
    original = getattr(owner, name, None)
    if original is None:
        return

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            events.append({"step": step, "began": began, "ended": time.time()})
            if after:
                after(args)

    setattr(owner, name, timed)


LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[\w-]+\] (.*)$")
READY = re.compile(r"\S+@\S+ ready\.$")
RECEIVED = re.compile(r"Task \S+\[([\w-]+)\] received")
SUCCEEDED = re.compile(r"Task \S+\[([\w-]+)\] succeeded in ([\d.]+)s")
LOADED = re.compile(r"loaded \S+ model .* \(([\d.]+)s")
IMPORTED = re.compile(r"imported torch .* \(([\d.]+)s\)")


def worker_log_events(text: str) -> dict[str, Any]:
    """Times (epoch seconds, from the log's local timestamps) of the worker's first ready, received,
    torch import, model load and succeeded lines; the import's, the load's and the task's own seconds.
    A worker killed at the end of its job may never log the succeeded line."""
    found: dict[str, Any] = {}
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        message = match.group(2)
        if READY.search(message):
            found.setdefault("ready", when)
        elif (received := RECEIVED.search(message)) and "received" not in found:
            found["received"], found["task"] = when, received.group(1)
        elif (imported := IMPORTED.search(message)) and "imported" not in found:
            found["imported"], found["import_seconds"] = when, float(imported.group(1))
        elif (loaded := LOADED.search(message)) and "loaded" not in found:
            found["loaded"], found["load_seconds"] = when, float(loaded.group(1))
        elif (succeeded := SUCCEEDED.search(message)) and "succeeded" not in found:
            found["succeeded"], found["task_seconds"] = when, float(succeeded.group(2))
    return found


def _markers(output: Path) -> list[dict[str, Any]]:
    folder = output / "_batchformers" / "shards"
    names = sorted(folder.glob("[0-9]*.json")) if folder.exists() else []
    return [json.loads(p.read_text()) for p in names if not p.name.endswith(".failed.json")]


def _completion(output: Path) -> dict[str, Any]:
    for path in (output / "_batchformers" / "_SUCCESS", output / "_SUCCESS"):
        if path.exists() and path.read_text().strip():
            loaded: dict[str, Any] = json.loads(path.read_text())
            return loaded
    return {}


def breakdown(driver: dict[str, Any], logs: Path, output: Path, spawned: float, seconds: float) -> dict[str, Any]:
    """Seconds of each step of one instrumented run; a step it could not see maps to the reason."""
    steps: dict[str, Any] = {}

    def first(step: str) -> dict[str, Any] | None:
        return next((e for e in driver["events"] if e["step"] == step), None)

    def span(step: str) -> float | str:
        event = first(step)
        return event["ended"] - event["began"] if event else f"not measured: no {step} call seen"

    steps["interpreter start"] = driver["imported"] - spawned
    steps["submit (in run)"] = span("submit")
    steps["Redis start"] = span("redis start")
    log_files = sorted(logs.glob("worker-*.log"))
    log = worker_log_events(log_files[0].read_text()) if log_files else {}
    spawn = first("worker spawn")
    no_log = "not measured: no worker log kept" if not log_files else None

    def between(start: float | None, end: str, what: str) -> float | str:
        if no_log:
            return no_log
        if start is None or end not in log:
            return f"not measured: {what}"
        return float(log[end]) - start

    steps["worker start (boot to ready)"] = between(spawn["began"] if spawn else None, "ready",
                                                    "no worker spawn or ready line")
    steps["torch import"] = log.get("import_seconds", no_log or "not measured: no `imported torch` line")
    steps["model load"] = log.get("load_seconds", no_log or "not measured: no `loaded ... model` line")
    # The first shard's work begins once its message is here and its model loaded (before the task,
    # when pre-loaded; inside it otherwise, after the pool process took the message).
    shard_start = max(log["received"], log["loaded"]) if {"received", "loaded"} <= set(log) else None
    steps["ready to shard start"] = (shard_start - log["ready"] if shard_start and "ready" in log
                                     else no_log or "not measured: no ready, received or loaded line")
    markers = sorted(_markers(output), key=lambda m: m.get("committed_at", 0))
    steps["first shard"] = markers[0]["seconds"] if markers else "not measured: no commit marker"
    completed = _completion(output).get("completed_at")
    steps["commit"] = (completed - shard_start - markers[0]["seconds"] if completed and shard_start and markers
                       else no_log or "not measured: no _SUCCESS time, shard start or marker")
    stop = first("workers stop")  # the first stop (or kill) of the workers, then Redis's stop
    ended = max((e["ended"] for e in driver["events"] if e["step"] in ("workers stop", "redis stop")), default=None)
    steps["complete to stop"] = (stop["began"] - completed if stop and completed
                                 else "not measured: no _SUCCESS time or no stop call")
    steps["stop"] = ended - stop["began"] if stop and ended else "not measured: no stop call seen"
    steps["total (instrumented run)"] = seconds
    return {"steps": steps, "code": driver["code"], "log": log}


# ---- submit, status and jobs against a broker ----

def submit_sample(spec_file: Path, workdir: Path, broker_url: str) -> float:
    env = environment(BATCHFORMERS_QUEUE=f"bf-startup-{uuid.uuid4().hex[:8]}")
    output = fresh_output(workdir, "submit")
    return _seconds([str(console_script()), "submit", str(spec_file), "--output", str(output),
                     "--broker", broker_url], env)


def status_output(s3: Any, broker_url: str, shards: int) -> tuple[str, dict[str, Any]]:
    """A job with ``shards`` commit markers on S3, known to the broker: :func:`bench.scale.status_at_scale`
    builds it (and times status in process); its output location is the one run folder of its bucket."""
    import boto3

    from bench import scale
    from jobs.io.layout import OutputLayout
    from jobs.settings import Settings
    from producer.job_index import remember

    before = {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}
    in_process = scale.status_at_scale(str(FIXTURE_MODEL), s3, broker_url, shards)
    bucket = next(b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"] if b["Name"] not in before)
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="runs/", Delimiter="/")
    output = f"s3://{bucket}/{listing['CommonPrefixes'][0]['Prefix'].rstrip('/')}"
    remember(Settings(broker_url=broker_url), OutputLayout(output).read_manifest().job_id, output)
    return output, in_process


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
            found["figures"].append(figure("status", runs, lambda: _seconds([script, "status", output], env),
                                           shards=shards))
            found["figures"].append(figure("jobs", runs, lambda: _seconds([script, "jobs"], env), shards=shards))
            floor = [sys.executable, "-c", f"import s3fs; s3fs.S3FileSystem().ls({output!r})"]
            found["figures"].append(figure("s3_client", runs, lambda: _seconds(floor, env), shards=shards))
            local = local_copy(output, workdir / "status-local", broker_url)
            log(f"status and jobs x{runs}, the same job copied to local disk")
            found["figures"].append(figure("status_local", runs, lambda: _seconds([script, "status", local], env),
                                           shards=shards))
            found["figures"].append(figure("jobs_local", runs, lambda: _seconds([script, "jobs"], env), shards=shards))
    return found


def local_copy(output: str, directory: Path, broker_url: str) -> str:
    """The S3 output copied to local disk, and the broker's job index pointed at the copy (same job, same ledger)."""
    import shutil

    import fsspec

    from jobs.io.layout import OutputLayout
    from jobs.settings import Settings
    from producer.job_index import remember

    shutil.rmtree(directory, ignore_errors=True)
    fsspec.filesystem("s3").get(output.rstrip("/") + "/", str(directory) + "/", recursive=True)
    remember(Settings(broker_url=broker_url), OutputLayout(str(directory)).read_manifest().job_id, str(directory))
    return str(directory)


def _unmeasured(name: str, exc: Exception, **fields: Any) -> dict[str, Any]:
    return {"name": name, "label": LABELS.get(name, name).format(**fields), "target": TARGETS.get(name),
            "samples": [], "median": None, "met": None, "load": [load_average()] * 2,
            "error": f"{type(exc).__name__}: {exc}"[:500], **fields}


def demo_sample(workdir: Path) -> float:
    return _seconds([str(console_script()), "demo", "--workdir", str(fresh_output(workdir, "demo"))])


# ---- the other helpers' measurements ----

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


# ---- the whole bench ----

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
        results["figures"].append(figure("model_stack", runs, lambda: _seconds(MODEL_STACK, environment())))
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


BREAKDOWN = (
    ("CLI import", "fresh `python -c`: `import producer.cli` + `import producer.run`"),
    ("spec load", "fresh process, `jobs.spec.load_spec` (after the producer's imports)"),
    ("model check", "same process, `producer.model_check.check_model`"),
    ("pin", "same process, `producer.pin.resolve_pin`"),
    ("plan", "same process, `producer.plan.build_manifest`"),
    ("submit (in run)", "instrumented run: `producer.run.submit`"),
    ("Redis start", "instrumented run: `EmbeddedRedis.start`"),
    ("worker start (boot to ready)", "worker spawn to Celery's `ready.` line"),
    ("torch import", "the worker's `imported torch ... (N s)` line, where it logs one"),
    ("model load", "the worker's `loaded ... model ... (N s)` line"),
    ("ready to shard start", "`ready.` line to the later of the `received` and `loaded` lines"),
    ("first shard", "the first commit marker's `seconds`"),
    ("commit", "shard start + its `seconds` to `_SUCCESS`'s `completed_at` (part, marker, count, `_SUCCESS`)"),
    ("complete to stop", "`_SUCCESS` `completed_at` to the first `LocalWorkers.stop` (or `.kill`) call"),
    ("stop", "that call to the end of `EmbeddedRedis.stop`"),
    ("total (instrumented run)", "the instrumented process, start to exit"),
)


def breakdown_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per step: the median over the fresh processes, or why it was not measured."""
    values: dict[str, list[Any]] = {}
    imports = results.get("imports", {})
    for sample in imports.get("samples", []):
        values.setdefault("CLI import", []).append(sample["producer.cli"] + sample["producer.run"])
    for sample in results.get("steps", {}).get("samples", []):
        for name in STEP_NAMES[1:]:
            values.setdefault(name, []).append(sample.get(name, f"not measured: {sample['errors'].get(name)}"))
    runs = results.get("runs_instrumented")
    for run in runs if isinstance(runs, list) else []:
        for name, value in run["steps"].items():
            values.setdefault(name, []).append(value)
    failed = {name: part.get("error") for name, part in (("imports", imports), ("steps", results.get("steps", {})),
                                                           ("runs", runs if isinstance(runs, dict) else {}))}
    source = {"CLI import": "imports", **{name: "steps" for name in STEP_NAMES}}
    rows = []
    for name, how in BREAKDOWN:
        found = values.get(name, [])
        numbers = [v for v in found if isinstance(v, (int, float))]
        reasons = [v for v in found if isinstance(v, str)]
        error = failed[source.get(name, "runs")]
        note = reasons[0] if reasons else f"not measured: {error}" if error else None if numbers else "not measured"
        rows.append({"step": name, "how": how, "median": statistics.median(numbers) if numbers else None,
                     "samples": numbers, "note": note})
    return rows


# ---- the report ----

def _seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _met_text(met: bool | None) -> str:
    return "-" if met is None else "yes" if met else "**no**"


def markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = ["## Start-up and fixed costs (`python -m bench --startup`)", "",
             f"Run {results['date']}{' (--quick)' if results['quick'] else ''} on {results['cores']} cores: "
             f"each figure is the median of {runs} fresh process{'es' if runs > 1 else ''}; `load` is the load "
             f"average (1 min) before and after it (whole bench: {results['load_start']:.2f} -> "
             f"{results['load_end']:.2f}).", "",
             "| command | median s | target s | met | runs | load |", "|---|---:|---:|---|---:|---|"]
    for f in results["figures"]:
        median = _seconds_text(f["median"]) if not f.get("error") else f"not measured: {f['error']}"
        lines.append(f"| {f['label']} | {median} | {_seconds_text(f['target'])} | {_met_text(f['met'])} | "
                     f"{len(f['samples'])} | {f['load'][0]:.2f}-{f['load'][-1]:.2f} |")
    lines += ["", f"### Where `batchformers run` spends its time ({RUN_ROWS} rows, one worker)", "",
              "| step | median s | how it is measured |", "|---|---:|---|"]
    for row in results["breakdown"]:
        shown = _seconds_text(row["median"]) if row["median"] is not None else row["note"]
        lines.append(f"| {row['step']} | {shown} | {row['how']} |")
    imports = results.get("imports", {})
    if imports.get("samples"):
        heavy = sorted({m for s in imports["samples"] for m in s["heavy"]})
        lines += ["", f"Heavy modules loaded by `import producer.cli` + `producer.run`: "
                  f"{', '.join(heavy) or 'none'}. The heaviest entries of `import producer.cli`'s import tree "
                  "(`-X importtime`, one process; cumulative, so nested entries are counted in their parents): "
                  + ", ".join(f"{e['module']} {e['seconds']:.2f} s" for e in imports["heaviest"]) + "."]
    steps = [s for s in results.get("steps", {}).get("samples", []) if "producer imports" in s]
    if steps:
        lines += ["", f"The producer steps' process imported their modules in "
                  f"{statistics.median(s['producer imports'] for s in steps):.2f} s (median) and held "
                  f"{', '.join(sorted({m for s in steps for m in s['heavy']})) or 'no heavy module'} afterwards."]
    if results.get("status_in_process"):
        s = results["status_in_process"]
        lines += ["", f"`status` in process (the function the CLI calls) at {s['shards']:,} shards: "
                  f"{s['status_seconds']:.2f} s from the ledger, {s['without_broker_seconds']:.2f} s from the markers."]
    lines += ["", "### Other measurements of issue 21", "", "| measurement | value | target | met |", "|---|---:|---:|---|"]
    for key, hook in results["hooks"].items():
        if hook.get("error"):
            lines.append(f"| {key} (`{hook['module']}`) | {hook['error']} | - | - |")
            continue
        for f in hook["figures"]:
            unit = f" {f['unit']}" if f.get("unit") else ""
            value = "-" if f.get("value") is None else f"{f['value']:.3g}{unit}"
            target = "-" if f.get("target") is None else f"{'>=' if f.get('better') == 'higher' else '<='} {f['target']:.3g}{unit}"
            note = f" ({f['note']})" if f.get("note") else ""
            lines.append(f"| {f['name']}{note} | {value} | {target} | {_met_text(f['met'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """The bench's own fresh processes: ``steps SPEC`` and ``drive-run SPEC OUTPUT KEEP``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["steps"]:
        print(json.dumps(_steps(argv[1])))
        return 0
    if argv[:1] == ["drive-run"]:
        return _drive_run(*argv[1:4])
    print("usage: python -m bench --startup [--quick]  (this module's own entries: steps, drive-run)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
