"""Fresh processes for the start-up bench: the environment they get, their wall time, their output checked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT = 600.0
HEAVY_MODULES = ("torch", "transformers", "datasets", "pandas")


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


def seconds_of(command: list[str], env: dict[str, str] | None = None) -> float:
    seconds, done = timed_command(command, env)
    checked(done)
    return seconds


def fresh_output(workdir: Path, name: str) -> Path:
    path = workdir / "out" / f"{name}-{uuid.uuid4().hex[:8]}"
    shutil.rmtree(path, ignore_errors=True)
    return path
