"""``batchformers compact`` killed (SIGKILL, a real subprocess) at each step, then run again: every row once;
and a second compact while one runs is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.errors import OutputError
from producer import compact as compaction
from producer.compact import FAULT_POINTS, FAULTS_ENV, LOCK_FILE, compact
from tests.reliability import read_back, wait_until
from tests.test_compact import _finished_job, _visible

SHARDS = 12
IDS = [f"r{i}" for i in range(SHARDS)]


def assert_every_row_once(output: Path) -> None:
    """What a reader sees: every row once (none lost, none doubled), in row order across the parts."""
    table = read_back(output)
    assert sorted(table.column("row_index").to_pylist()) == list(range(SHARDS))
    assert sorted(table.column("id").to_pylist()) == sorted(IDS)
    in_order = [pq.read_table(output / name).column("row_index").to_pylist() for name in _visible(output)]
    assert [i for rows in in_order for i in rows] == list(range(SHARDS))


def _compact_process(output: Path, target_mb: float, faults: str = "") -> subprocess.Popen[bytes]:
    env = {**os.environ, FAULTS_ENV: faults}
    return subprocess.Popen([sys.executable, "-m", "producer.cli", "compact", str(output), "--target-mb",
                             f"{target_mb:.9f}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _target_mb(output: Path) -> float:
    """About four parts per merged part: three groups, so that "one group staged" differs from "all staged"."""
    return (output / "part-00000.parquet").stat().st_size * 4.5 / 2**20


@pytest.mark.slow  # a compact subprocess killed and one run again, at each of six points
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_compact_killed_at_each_step_loses_and_doubles_nothing(tmp_path: Path, point: str) -> None:
    _finished_job(tmp_path, shards=SHARDS)
    output = tmp_path / "out"
    target = _target_mb(output)
    killed = _compact_process(output, target, faults=f"compact-kill={point}")
    _, err = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, err.decode()
    assert (output / LOCK_FILE).exists()  # the killed compact's lock is left behind ...
    again = _compact_process(output, target)  # ... and taken over: its process is gone
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    assert_every_row_once(output)
    assert len(_visible(output)) == 3 and not (output / LOCK_FILE).exists()
    assert not list((output / "_batchformers" / "compact").glob("*"))


@pytest.mark.slow  # a compact subprocess that sleeps holding its lock
def test_a_second_compact_is_refused_while_one_runs(tmp_path: Path) -> None:
    _finished_job(tmp_path, shards=SHARDS)
    output = tmp_path / "out"
    target = _target_mb(output)
    first = _compact_process(output, target, faults="compact-sleep=staged")  # holds the lock for seconds
    try:
        wait_until(lambda: list((output / "_batchformers" / "compact").glob("*.parquet")), 60, "the first to stage")
        began = time.monotonic()
        with pytest.raises(OutputError, match=f"another compact of {output} is running .*pid {first.pid}"):
            compact(str(output), target_bytes=int(target * 2**20))
        assert time.monotonic() - began < compaction.FAULT_SLEEP  # refused at once, while the first still runs
        assert first.poll() is None
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    assert_every_row_once(output)
    assert len(_visible(output)) == 3 and not (output / LOCK_FILE).exists()
