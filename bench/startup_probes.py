"""What the start-up bench measures inside fresh processes: imports, the producer's steps, an instrumented ``run``.

``python -m bench.startup_probes steps SPEC`` and ``drive-run SPEC OUTPUT KEEP`` are the
processes themselves; :func:`breakdown` reads an instrumented run's events, worker log and
markers into the seconds of each step.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.processes import (
    HEAVY_MODULES,
    checked,
    console_script,
    environment,
    fresh_output,
    seconds_of,
    timed_command,
)

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
        done = checked(timed_command([sys.executable, "-m", "bench.startup_probes", "steps", str(spec_file)])[1])
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


def run_sample(spec_file: Path, workdir: Path) -> float:
    output = fresh_output(workdir, "run")
    seconds = seconds_of([str(console_script()), "run", str(spec_file), "--output", str(output), "--no-progress"])
    return seconds


class WarmRuns:
    """``run --keep-warm`` in fresh processes: :meth:`first` starts a new pool (its own cache directory,
    so its own state), :meth:`again` runs on the newest one; every pool is stopped on exit."""

    def __init__(self, spec_file: Path, workdir: Path, keep_warm: float = 60.0) -> None:
        self.spec_file, self.workdir, self.keep_warm = spec_file, workdir, keep_warm
        self.caches: list[Path] = []

    def _run(self, cache: Path) -> float:
        output = fresh_output(self.workdir, "warm")
        env = environment(BATCHFORMERS_CACHE_DIR=str(cache), BATCHFORMERS_KEEP_WARM_SECONDS=str(self.keep_warm))
        return seconds_of([str(console_script()), "run", str(self.spec_file), "--output", str(output),
                           "--no-progress"], env)

    def first(self) -> float:
        self.caches.append(self.workdir / "warm" / f"cache-{len(self.caches)}")
        return self._run(self.caches[-1])

    def again(self) -> float:
        return self._run(self.caches[-1])

    def __enter__(self) -> WarmRuns:
        return self

    def __exit__(self, *exc: object) -> None:
        from producer.warm_pool import PoolState, stop_pool

        for cache in self.caches:
            for path in cache.glob("warm/*.json"):
                state = PoolState.read(path)
                if state is not None:
                    stop_pool(state, path)


def instrumented_run(spec_file: Path, workdir: Path) -> dict[str, Any]:
    """One ``run`` in a fresh process with its steps timed and its worker logs kept (see :func:`_drive_run`)."""
    output = fresh_output(workdir, "breakdown")
    keep = workdir / "logs" / output.name
    keep.mkdir(parents=True, exist_ok=True)
    spawned = time.time()
    seconds, done = timed_command([sys.executable, "-m", "bench.startup_probes", "drive-run", str(spec_file), str(output),
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


def main(argv: list[str] | None = None) -> int:
    """The bench's own fresh processes: ``steps SPEC`` and ``drive-run SPEC OUTPUT KEEP``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["steps"]:
        print(json.dumps(_steps(argv[1])))
        return 0
    if argv[:1] == ["drive-run"]:
        return _drive_run(*argv[1:4])
    print("usage: python -m bench.startup_probes steps SPEC | drive-run SPEC OUTPUT KEEP (started by python -m bench --startup)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
