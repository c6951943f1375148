"""Run a shard in steps and commit its finished rows in pieces, so a lost worker costs at most one piece.

The shard's rows go in steps of ``piece_rows`` (``BATCHFORMERS_PIECE_ROWS``; 0: the whole shard);
the rows finished are committed as a piece once ``piece_seconds`` have passed since the piece
began (``BATCHFORMERS_PIECE_SECONDS``), and at the shard's end. The runner gets as many whole
steps at once as the piece's rate says fit in its time (its length sorting works within one run). A shard that takes less than
``piece_seconds`` is therefore one piece, one part, as it always was; a long one leaves a part
every ``piece_seconds``, and the holder that takes it over (after a kill, a preemption, a
give-back) follows the chain of committed pieces and starts after the last one.

Both are worker settings, not job fields: the claims (:mod:`jobs.io.pieces`) keep the pieces
exactly-once whatever sizes the workers chose, and how much work a lost worker may cost is the
operator's trade against the number of parts. Each piece's commit is guarded like a whole
shard's: the lease confirmed on the broker, the output still the job's, the shard not committed.
No Celery here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from jobs.errors import OutputError
from jobs.io.layout import CommitFault
from jobs.io.pieces import ShardPieces, chain, piece_part_name

Run = Callable[[int, int], tuple[pa.Table, dict[str, Any]]]
"""Run rows ``[start, stop)`` of the shard: their output table and summary (``jobs.shard.run_shard``)."""
Guard = Callable[[], "str | None"]
"""Why this run must not commit now (the lease lost ...); None: commit."""
SUMMED = ("rows", "errors", "seconds", "batches", "tokens", "padded_tokens", "truncated")
TOTALS = ("rows", "errors", "truncated")


def _nothing(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class PieceHooks:
    """What the worker adds around the pieces (drain, faults); each does nothing by default."""

    step: Callable[[int, int], None] = _nothing  # (start, stop): rows about to run
    before_last: Callable[[], None] = _nothing  # the last rows are done: the shard's own commit follows
    before_piece: Callable[[], None] = _nothing  # an earlier piece's commit begins (never interrupted)
    after_piece: Callable[[int], None] = _nothing  # (stop, or -1 when another holder had claimed it): it is over
    commit_point: CommitFault | None = None  # inside the last piece's part write (jobs.io.layout.COMMIT_POINTS)


@dataclass
class Outcome:
    """What a run in pieces leaves for the shard's commit marker."""

    shard: int
    summary: dict[str, Any] = field(default_factory=dict)  # this run's work (rows it ran, seconds, stages)
    pieces: list[dict[str, Any]] = field(default_factory=list)  # the shard's claims, in row order
    skipped: str | None = None  # why it stopped without committing the shard
    resumed_at: int | None = None  # the first row this run ran (those before were committed already)
    write_seconds: float = 0.0
    followed: bool = False  # another run won a claim this run made: it may have written the marker too

    @property
    def parts(self) -> list[str]:
        return [piece_part_name(self.shard, int(piece["start"])) for piece in self.pieces]

    def totals(self) -> dict[str, int]:
        """Rows, errors and truncated rows of the whole shard, from its pieces' claims."""
        return {name: sum(int(piece.get(name) or 0) for piece in self.pieces) for name in TOTALS}

    def ran(self, start: int, summary: dict[str, Any]) -> None:
        self.summary = merge(self.summary, summary)
        if self.resumed_at is None:
            self.resumed_at = start


def merge(into: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Two runs' summaries as one: counts and seconds added, stage seconds added per stage."""
    merged = {**summary, **into}
    for name in SUMMED:
        if name in into or name in summary:
            merged[name] = into.get(name, 0) + summary.get(name, 0)
    if "seconds" in merged:
        merged["seconds"] = round(merged["seconds"], 3)
    stages = dict(into.get("stages", {}))
    for name, seconds in summary.get("stages", {}).items():
        stages[name] = round(stages.get(name, 0.0) + seconds, 4)
    merged["stages"] = stages
    return merged


def run_in_pieces(store: ShardPieces, rows: int, run: Run, guard: Guard, *, step: int, seconds: float,
                  holder: str, hooks: PieceHooks | None = None) -> Outcome:
    """Run and commit, piece by piece, the shard's rows no earlier run committed.

    ``outcome.skipped`` says why it stopped early (``guard``'s answer); otherwise every row is in a
    published piece (``outcome.pieces``, in row order) and the caller writes the shard's marker."""
    hooks = hooks or PieceHooks()
    step = step or max(rows, 1)
    outcome = Outcome(store.shard)
    claims = store.claims()
    start, first = 0, True
    while first or start < rows:
        first = False
        claim = claims.get(start)
        if claim is not None:  # committed by an earlier run, or its part still to publish
            stop = int(claim["stop"])
            if stop <= start < rows or stop > rows:
                raise OutputError(f"piece claim {start} of shard {store.shard} is not a row range of the shard "
                                  f"(stop {stop}); delete {store.folder} in the output to run the shard afresh")
            if not store.published(start):  # its writer died between claim and part: redo exactly its rows
                table, done = _run(run, start, stop, hooks, step)
                outcome.ran(start, done)
                if not _guarded(guard, stop >= rows, hooks, outcome):
                    return outcome
                _publish(store, start, table, stop >= rows, hooks, outcome)
            start = stop
            continue
        tables: list[pa.Table] = []
        piece: dict[str, Any] = {}
        stop, began = start, time.monotonic()
        while not tables or (stop < rows and time.monotonic() - began < seconds):
            end = min(rows, stop + step * _steps_that_fit(stop - start, time.monotonic() - began, seconds, step))
            table, done = _run(run, stop, end, hooks, step)
            tables.append(table)
            piece = merge(piece, done)
            stop = end
        outcome.ran(start, piece)
        last = stop >= rows
        if not _guarded(guard, last, hooks, outcome):
            return outcome
        record = {"start": start, "stop": stop, "holder": holder, "claimed_at": round(time.time(), 3),
                  **{name: int(piece.get(name) or 0) for name in TOTALS}}
        if not store.claim(record):  # another holder claimed this start first: follow its chain instead
            claims, outcome.followed = store.claims(), True
            if not last:
                hooks.after_piece(-1)
            continue
        claims[start] = record
        _publish(store, start, pa.concat_tables(tables), last, hooks, outcome)
        start = stop
    outcome.pieces = chain(claims, rows)
    return outcome


def _steps_that_fit(done: int, elapsed: float, seconds: float, step: int) -> int:
    """How many steps of ``step`` rows to run at once: as many as the piece's rate so far says will end
    before its ``seconds`` are up (at least one). The runner sorts rows by length within one run, so
    1,024-row runs pad far more than a whole shard (1.63x the real tokens against 1.09x, on mixed-length
    text); a piece still ends at most one run after its time, and at a multiple of ``step``."""
    if not done:
        return 1
    if elapsed <= 0:
        return max(1, done // step)  # too fast to time: as many again as ran
    return max(1, int(done / elapsed * (seconds - elapsed)) // step)


def _run(run: Run, start: int, stop: int, hooks: PieceHooks, step: int) -> tuple[pa.Table, dict[str, Any]]:
    """Rows ``[start, stop)`` in one run of the runner; ``hooks.step`` hears of each step in them first."""
    for begin in range(start, stop, step):
        hooks.step(begin, min(stop, begin + step))
    return run(start, stop)


def _guarded(guard: Guard, last: bool, hooks: PieceHooks, outcome: Outcome) -> bool:
    """Whether the run may commit now: the hooks told, then the lease and the output checked."""
    (hooks.before_last if last else hooks.before_piece)()
    outcome.skipped = guard()
    return outcome.skipped is None


def _publish(store: ShardPieces, start: int, table: pa.Table, last: bool, hooks: PieceHooks,
             outcome: Outcome) -> None:
    began = time.perf_counter()
    store.publish(start, table, hooks.commit_point if last else None)
    outcome.write_seconds += time.perf_counter() - began
    if not last:
        hooks.after_piece(start + table.num_rows)
