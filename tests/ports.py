"""Servers in subprocesses on a free port, without the race of choosing a port then binding it.

``free_port()`` only says a port was free when asked; by the time a worker's metrics server or
Flower binds it, another process may hold it (an outgoing connection's local port, another
test's server). So a server is started on a free port and kept only once the kernel shows
*its* process listening there (Linux ``/proc``); if another process holds the port, or ours
exits, it is stopped and started again on another port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from producer.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
LISTEN = "0A"  # the TCP state in /proc/net/tcp
TIME_WAIT = "06"  # leftover of a closed connection; does not stop a server binding (SO_REUSEADDR)
ATTEMPTS = 5


def sockets_on(port: int) -> dict[int, str]:
    """Inode -> TCP state of every socket bound locally to ``port`` (any address, IPv4 or IPv6)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != TIME_WAIT:
                found[int(fields[9])] = fields[3]
    return found


def holders(inode: int) -> set[int]:
    """Processes with the socket ``inode`` open (a forked child shares its parent's)."""
    target = f"socket:[{inode}]"
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                pids.add(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def listens(pid: int, port: int) -> bool | None:
    """True when ``pid`` listens on ``port``; False when another process holds the port; None: not yet."""
    sockets = sockets_on(port)
    for inode, state in sockets.items():
        owners = holders(inode)
        if pid in owners and state == LISTEN:
            return True
        if owners and pid not in owners:
            return False
    return None


def serve_on_a_free_port(start: Callable[[int], tuple[int, Callable[[], None]]], timeout: float = 90) -> int:
    """Call ``start(port)`` (-> the pid that will listen, and how to stop it) until that process
    listens on the port it was given; returns the port."""
    for _attempt in range(ATTEMPTS):
        port = free_port()
        pid, stop = start(port)
        deadline = time.monotonic() + timeout
        state = None
        while state is None and time.monotonic() < deadline and _alive(pid):
            state = listens(pid, port)
            if state is None:
                time.sleep(0.1)
        if state:
            return port
        stuck = state is None and _alive(pid)
        stop()
        if stuck:
            raise AssertionError(f"process {pid} did not listen on port {port} within {timeout} s")
    raise AssertionError(f"no free port kept after {ATTEMPTS} attempts")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


@contextmanager
def flower_on_a_free_port(env: dict[str, str], log_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``batchformers flower`` in a subprocess with ``env``, listening on a free port: (port, process);
    stopped on exit, its output in ``log_path``."""
    started: list[subprocess.Popen[bytes]] = []
    with open(log_path, "wb") as log:

        def start(port: int) -> tuple[int, Callable[[], None]]:
            started.append(subprocess.Popen([sys.executable, "-m", "producer.cli", "flower", "--port", str(port)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
            process = started[-1]
            return process.pid, lambda: stop_process(process)

        port = serve_on_a_free_port(start)
        try:
            yield port, started[-1]
        finally:
            stop_process(started[-1])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
