"""A local pool kept warm between runs: the embedded Redis and local workers outlive ``batchformers run``.

A small job's run on this machine is mostly the workers' start: a fresh process that only
imports torch, transformers and a model class takes ~4.8 s, of a 5.7 s run. With
``BATCHFORMERS_KEEP_WARM_SECONDS`` = N (``run --keep-warm N``) the Redis and workers are
started by a detached supervisor (``python -m producer.warm_pool``) that stops them once no
run has used them for N seconds; the next ``run`` with the same environment finds them
through a state file and submits straight to them, with their models still loaded.

One pool per environment (``pool_key``: the interpreter, the working directory, the worker
count and every variable a worker reads), so a run never lands on workers started with
other settings or code. The state file holds the pool's Redis URL and password: it lives in
a directory only we can read (0700, ours, refused otherwise) and is written 0600.
A run keeps an attachment key alive in the pool's Redis while it watches its job; the
supervisor counts idle time from when the last one went away. An interrupted run stops the
whole pool (as it stops its own workers), so the job's shards are not finished behind its back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from jobs.broker import client as broker_client
from jobs.errors import BatchformersError
from jobs.settings import ENV_PREFIX, Settings

STATE_SUBDIR = "warm"
ATTACH_PREFIX = "batchformers:warm:attached:"
ATTACH_TTL_SECONDS = 10
ATTACH_REFRESH_SECONDS = 3.0
IDLE_CHECK_SECONDS = 0.5
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
ENV_PREFIXES = (ENV_PREFIX, "HF_", "TRANSFORMERS_", "OMP_", "MKL_", "CUDA_", "PYTHON", "TOKENIZERS_")
"""Variables a worker's behaviour depends on; a pool is reused only by a run with the same ones."""
NOT_KEYED = (ENV_PREFIX + "BROKER_URL", ENV_PREFIX + "KEEP_WARM_SECONDS")


def pool_key(workers: int, environ: dict[str, str] | None = None) -> str:
    """What a reusable pool must share with the run: interpreter, directory, worker count, environment."""
    environ = dict(os.environ if environ is None else environ)
    keyed = sorted((name, value) for name, value in environ.items()
                   if name.upper().startswith(ENV_PREFIXES) and name.upper() not in NOT_KEYED)
    payload = json.dumps([sys.executable, os.getcwd(), workers, keyed, _code_stamp()])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _code_stamp() -> list[float]:
    """The newest change to our own code: a pool started before an edit or an upgrade is not reused."""
    root = Path(__file__).resolve().parent.parent
    return [max((p.stat().st_mtime for p in (root / package).rglob("*.py")), default=0.0)
            for package in ("jobs", "worker")]


def state_directory(settings: Settings | None = None) -> Path:
    """Where pool state files live; created 0700, refused when another user owns it or can read it."""
    directory = (settings or Settings()).resolved_cache_dir() / STATE_SUBDIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise BatchformersError(f"{directory} must be ours and closed to others (mode 0700) to hold a warm "
                                "pool's broker password; fix its permissions or unset BATCHFORMERS_KEEP_WARM_SECONDS")
    return directory


@dataclass(frozen=True)
class PoolState:
    """A running pool, as its state file describes it."""

    pid: int
    url: str
    log_dir: str

    @classmethod
    def read(cls, path: Path) -> PoolState | None:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), str(data["url"]), str(data["log_dir"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(self.__dict__, handle)
        temporary.replace(path)

    def alive(self) -> bool:
        """The supervisor runs and its Redis answers with the password the file holds."""
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        try:
            return bool(broker_client(self.url, timeout=1).ping())
        except Exception:  # noqa: BLE001 - any failure means: not usable, start another
            return False


class WarmPool:
    """A run's handle on a warm pool: its broker URL, its workers' logs, the attachment that keeps it up."""

    def __init__(self, state: PoolState, path: Path, started: bool) -> None:
        self.state = state
        self.path = path
        self.started = started
        """True when this run started the pool (its workers are still booting)."""

    @property
    def url(self) -> str:
        return self.state.url

    @contextmanager
    def attached(self) -> Iterator[WarmPool]:
        """Keep the pool from stopping while the run watches its job (a key refreshed by a thread)."""
        key = f"{ATTACH_PREFIX}{os.getpid()}-{threading.get_ident()}"
        client = broker_client(self.url, timeout=2)
        client.set(key, "1", ex=ATTACH_TTL_SECONDS)
        done = threading.Event()

        def refresh() -> None:
            while not done.wait(ATTACH_REFRESH_SECONDS):
                with suppress(Exception):
                    client.set(key, "1", ex=ATTACH_TTL_SECONDS)

        thread = threading.Thread(target=refresh, name="batchformers-warm-attach", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            with suppress(Exception):
                client.delete(key)

    def stop(self) -> None:
        """Stop the whole pool now (an interrupted run): the supervisor stops its workers and Redis."""
        stop_pool(self.state, self.path)


def stop_pool(state: PoolState, path: Path) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and _running(state.pid):
        time.sleep(0.05)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(state.pid, signal.SIGKILL)  # its own session; its children die with it (PDEATHSIG)
    with suppress(OSError):
        if PoolState.read(path) == state:
            path.unlink()


def _running(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # our child when this process started it: reap it
        return waited == 0
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def log_directory(workers: int, settings: Settings | None = None) -> Path:
    """Where this environment's pool writes its supervisor's and workers' logs (kept across runs)."""
    return state_directory(settings) / f"{pool_key(workers)}-logs"


def acquire(workers: int, idle_seconds: float, preload: tuple[str, str] | None = None,
            settings: Settings | None = None) -> WarmPool:
    """The warm pool for this environment: the running one, else one started now (detached)."""
    from filelock import FileLock

    directory = state_directory(settings)
    key = pool_key(workers)
    path = directory / f"{key}.json"
    with FileLock(str(directory / f"{key}.lock"), timeout=START_TIMEOUT_SECONDS):
        state = PoolState.read(path)
        if state is not None and state.alive():
            return WarmPool(state, path, started=False)
        if state is not None:
            stop_pool(state, path)  # a supervisor that lost its Redis, or a stale file
        logs = log_directory(workers, settings)
        return WarmPool(_start(path, workers, idle_seconds, preload, logs), path, started=True)


def _start(path: Path, workers: int, idle_seconds: float, preload: tuple[str, str] | None,
           logs: Path) -> PoolState:
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    command = [sys.executable, "-m", "producer.warm_pool", "--state", str(path), "--workers", str(workers),
               "--idle", str(idle_seconds), "--log-dir", str(logs)]
    if preload:
        command += ["--preload-output", preload[0], "--preload-spec", preload[1]]
    with open(logs / "pool.log", "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        state = PoolState.read(path)
        if state is not None and state.pid == process.pid:
            return state
        if process.poll() is not None:
            raise BatchformersError(f"the warm pool did not start (exit {process.returncode}); see {logs}/pool.log")
        time.sleep(0.02)
    process.kill()
    raise BatchformersError(f"the warm pool did not start within {START_TIMEOUT_SECONDS:.0f} s; "
                            f"see {logs}/pool.log")


def serve(path: Path, workers: int, idle_seconds: float, log_dir: str,
          preload: tuple[str, str] | None) -> None:
    """The supervisor: start Redis and workers, publish the state file, stop them when idle or told to."""
    from producer.embedded import EmbeddedRedis, LocalWorkers

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    with EmbeddedRedis(persist=False) as server:
        local = LocalWorkers(server.url, count=workers, log_dir=log_dir, preload=preload).start()
        state = PoolState(os.getpid(), server.url, log_dir)
        try:
            state.write(path)
            client = broker_client(server.url, timeout=2)
            last_used = time.monotonic()
            while not stop.wait(IDLE_CHECK_SECONDS):
                if any(process.poll() is not None for process in local.processes):
                    break  # a worker died: the next run starts a whole pool again
                if next(iter(client.scan_iter(match=ATTACH_PREFIX + "*", count=100)), None) is not None:
                    last_used = time.monotonic()
                elif time.monotonic() - last_used > idle_seconds:
                    break
        finally:
            with suppress(OSError):
                if PoolState.read(path) == state:
                    path.unlink()
            local.stop(fast=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m producer.warm_pool", description=serve.__doc__)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--workers", required=True, type=int)
    parser.add_argument("--idle", required=True, type=float)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--preload-output")
    parser.add_argument("--preload-spec")
    args = parser.parse_args(argv)
    preload = (args.preload_output, args.preload_spec) if args.preload_output and args.preload_spec else None
    serve(args.state, args.workers, args.idle, args.log_dir, preload)


if __name__ == "__main__":
    main()
