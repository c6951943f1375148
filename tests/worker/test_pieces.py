"""A long shard committed in pieces survives its worker (issue 24): SIGKILLed mid-shard, it is resumed
by the next worker after its last committed piece, redoing at most one piece, every row once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.io.layout import OutputLayout
from jobs.io.pieces import ShardPieces
from jobs.settings import Settings
from producer.status import job_status
from producer.submit import submit
from producer.watch import wait
from tests.reliability import (
    assert_completed,
    assert_exactly_once,
    committed_markers,
    first_held_shard,
    tokenize_spec,
    wait_until,
    worker_number,
    write_rows,
)
from worker import drain
from worker.faults import FAULTS_ENV

ROWS = 40
PIECE_ROWS = 4


def _steps(path: Path) -> list[tuple[int, int, int]]:
    """(start, stop, pid) of every step of rows a worker ran, from the ``steps=PATH`` fault."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(start), int(stop), int(pid)) for _, start, stop, pid, _ in (line.split() for line in lines)]


@pytest.mark.slow
def test_a_worker_killed_mid_shard_is_resumed_after_its_last_piece(tmp_path: Path, settings: Settings,
                                                                   start_workers: Any) -> None:
    steps = tmp_path / "steps.txt"
    ids = write_rows(tmp_path / "in.parquet", ROWS)
    workers = start_workers(2, BATCHFORMERS_LEASE_SECONDS="6", BATCHFORMERS_PIECE_ROWS=str(PIECE_ROWS),
                            BATCHFORMERS_PIECE_SECONDS="0.5", **{FAULTS_ENV: f"step-sleep=0.3,steps={steps}"})
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=ROWS), settings)
    layout = OutputLayout(submission.output)
    shard, holder, _ = first_held_shard(settings.broker_url, submission.job_id)
    store = ShardPieces(layout, shard)
    wait_until(lambda: len(store.claims()) >= 2 and store.published(int(store.claims()[0]["stop"])), 60,
               "two committed pieces")
    victim = workers.processes[worker_number(holder)]
    time.sleep(0.4)  # into the next piece: its rows are lost with the worker
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its pool child, mid-shard
    victim.wait()
    committed_before = {start: claim for start, claim in store.claims().items() if store.published(start)}
    resumed_from = max(int(claim["stop"]) for claim in committed_before.values())

    status = wait(submission.output, timeout=90)
    assert status.state == "complete", status
    assert_exactly_once(submission.output, ids)
    assert assert_completed(submission.output, ROWS)["rows"] == ROWS
    final = job_status(submission.output, settings)
    assert final.rows_done == ROWS and final.row_errors == 0
    marker = committed_markers(submission.output)[shard]
    assert marker["rows"] == ROWS and marker["attempt"] == 2 and marker["resumed_at"] >= resumed_from
    run = _steps(steps)
    first_pid = run[0][2]
    after = [step for step in run if step[2] != first_pid]
    assert after and min(start for start, _, _ in after) >= resumed_from > 0, "the next worker began at row 0"
    redone = sum(stop - start for start, stop, _ in run) - ROWS
    largest = max(int(claim["stop"]) - int(claim["start"]) for claim in store.claims().values())
    print(f"\npieces: killed after rows [0, {resumed_from}) were committed; {redone} rows redone "
          f"(largest piece {largest} rows)")
    assert 0 <= redone <= largest, "more than one piece was run twice"


@pytest.mark.slow
def test_a_preempted_shard_is_given_back_and_resumed_after_its_last_piece(tmp_path: Path, settings: Settings,
                                                                           start_workers: Any) -> None:
    steps = tmp_path / "steps.txt"
    ids = write_rows(tmp_path / "in.parquet", ROWS)
    workers = start_workers(2, BATCHFORMERS_DRAIN_SECONDS="0.5", BATCHFORMERS_PIECE_ROWS=str(PIECE_ROWS),
                            BATCHFORMERS_PIECE_SECONDS="0.5", **{FAULTS_ENV: f"step-sleep=0.3,steps={steps}"})
    submission = submit(tokenize_spec(tmp_path / "in.parquet", tmp_path / "out", shard_rows=ROWS, max_retries=0),
                        settings)
    shard, holder, _ = first_held_shard(settings.broker_url, submission.job_id)
    store = ShardPieces(OutputLayout(submission.output), shard)
    wait_until(lambda: len(store.claims()) >= 2, 60, "two committed pieces")
    stopping = workers.processes[worker_number(holder)]
    stopping.send_signal(signal.SIGTERM)  # a preemption notice: drain 0.5 s, then give the shard back
    assert stopping.wait(timeout=30) == 0

    status = wait(submission.output, timeout=60)
    assert status.state == "complete", status  # max_retries 0: a counted give-back would have failed it
    assert_exactly_once(submission.output, ids)
    marker = committed_markers(submission.output)[shard]
    assert marker["rows"] == ROWS and marker["attempt"] == 1 and marker["resumed_at"] > 0
    run = _steps(steps)
    after = [step for step in run if step[2] != run[0][2]]
    assert after and min(start for start, _, _ in after) == marker["resumed_at"]
    redone = sum(stop - start for start, stop, _ in run) - ROWS
    largest = max(int(claim["stop"]) - int(claim["start"]) for claim in store.claims().values())
    print(f"\npieces: given back with rows [0, {marker['resumed_at']}) committed; {redone} rows redone")
    assert 0 <= redone <= largest


def test_a_give_back_asked_during_a_pieces_commit_happens_right_after_it() -> None:
    """The drain's signal never interrupts a piece's commit; it is kept and honoured once the rows go on."""
    previous = signal.signal(drain.GIVE_BACK_SIGNAL, drain._give_back)
    try:
        drain.allow(0)
        drain.forbid(0)  # a piece's commit begins (PieceHooks.before_piece)
        os.kill(os.getpid(), drain.GIVE_BACK_SIGNAL)  # handled at once, in this (main) thread: nothing raised
        with pytest.raises(drain.ShardGivenBack):
            drain.resume(0)  # the piece is committed (PieceHooks.after_piece)
        drain.allow(1)
        drain.resume(1)  # a new shard: nothing asked for, nothing raised
    finally:
        drain.forbid()
        signal.signal(drain.GIVE_BACK_SIGNAL, previous)
