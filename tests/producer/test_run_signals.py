"""Stopping a real ``batchformers run`` (embedded Redis + local workers) with SIGTERM and Ctrl-C.

Before issue 12, SIGTERM left the embedded redis-server and the workers running as orphans,
and Ctrl-C took ~20 s and left the job showing "running". Now every process the run started
is gone within a few seconds, the run says how to resume, and status says "interrupted".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from producer.cli import main
from tests.reliability import write_rows
from worker.faults import FAULTS_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN = 15.0  # seconds from the signal to the last process gone (typically 3-5; CI machines are loaded)


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, from /proc (children of children too)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    write_rows(tmp_path / "in.parquet", 20)
    job = tmp_path / "job.yaml"
    output = tmp_path / "out"
    job.write_text(yaml.safe_dump({"task": "tokenize", "model": str(ROOT / "tests/fixtures/models/bert-ner"),
                                   "input": "in.parquet", "columns": {"id": "id"}, "output": "out",
                                   "shard_rows": 5}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHFORMERS_")},
           FAULTS_ENV: "sleep=30", "BATCHFORMERS_TORCH_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "producer.cli", "run", str(job), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    return process, job, output


def _wait_started(process: subprocess.Popen[str], output: Path, timeout: float = 90) -> set[int]:
    """Until the job is submitted (and taken by the run: its RUN marker) and redis-server, a worker
    and its pool process run; their PIDs. The workers start alongside submit, so either may come first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        children = _descendants(process.pid)
        meta = output / "_batchformers"
        if (meta / "manifest.json").exists() and (meta / "RUN").exists() and len(children) >= 3:
            return children
        time.sleep(0.2)
    raise AssertionError("the run did not start its Redis and worker in time")


def _all_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    left = {pid for pid in pids if _alive(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid for pid in left if _alive(pid)}
    return left


def test_sigterm_stops_every_process_and_says_how_to_resume(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    process, job, output = _start_run(tmp_path)
    children = _wait_started(process, output)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - signalled < STOP_WITHIN, err
    assert process.returncode == 128 + signal.SIGTERM, err
    assert not _all_gone(children, 2.0), f"left behind: {children}"
    assert "SIGTERM" in err and "interrupted" in err and f"batchformers run {job}" in err, err

    assert main(["status", str(output), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "interrupted" and "SIGTERM" in shown["note"], shown


def test_ctrl_c_twice_forces_the_stop(tmp_path: Path) -> None:
    process, _, output = _start_run(tmp_path)
    children = _wait_started(process, output)
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)  # the second one kills at once
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - signalled < STOP_WITHIN, err
    assert process.returncode == 130, err
    assert not _all_gone(children, 2.0), f"left behind: {children}"
    assert "Traceback" not in err, err


def test_invalid_worker_counts_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for count in ("0", "-2"):
        with pytest.raises(SystemExit) as exited:
            main(["run", str(tmp_path / "job.yaml"), "--workers", count])
        assert exited.value.code == 2
        assert "--workers: must be at least 1" in capsys.readouterr().err


def test_sigkill_takes_its_processes_along_and_status_says_interrupted(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    process, _, output = _start_run(tmp_path)
    children = _wait_started(process, output)
    process.kill()  # no handler can run: the children die with their parent (PR_SET_PDEATHSIG)
    process.communicate(timeout=30)
    assert not _all_gone(children, STOP_WITHIN), f"left behind: {children}"
    assert main(["status", str(output), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "interrupted" and "ended without finishing it" in shown["note"], shown
