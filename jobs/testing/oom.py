"""An out-of-memory stand-in for tests: batches above a row count fail as a full GPU would make them."""

from __future__ import annotations

from jobs.engine.batching import BatchProbe, SimulatedOutOfMemory


class InjectedOutOfMemory(SimulatedOutOfMemory):
    """Raised by :func:`oom_above`'s probe in place of a real CUDA out-of-memory error."""


def oom_above(limit: int) -> BatchProbe:
    """A ``jobs.engine.batching.batch_probe`` failing every batch of more than ``limit`` rows.

    Install it for one test with ``monkeypatch.setattr(batching, "batch_probe", oom_above(2))``.
    """

    def probe(rows: int) -> None:
        if rows > limit:
            raise InjectedOutOfMemory(f"CUDA out of memory (injected above {limit} rows, for {rows} rows)")

    return probe
