"""Row validation, length-sorted batching and out-of-memory splitting shared by every task type."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

DEFAULT_BATCH_SIZE = 64


def text_error(value: Any, role: str = "text") -> str | None:
    """Why ``value`` cannot be fed to a model as ``role``, or None when it can."""
    if value is None:
        return f"{role} is null"
    if not isinstance(value, str):
        return f"{role} must be a string, got {type(value).__name__}"
    return None


def length_sorted_batches(
    lengths: Sequence[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_tokens: int | None = None,
) -> Iterator[list[int]]:
    """Yield lists of row indices, longest rows first, so that padding is small.

    A batch holds at most ``batch_size`` rows and, when ``max_batch_tokens`` is set,
    at most that many padded tokens (``rows * longest``); a single row longer than
    the budget still forms a batch of its own. Longest first makes an out-of-memory
    batch show up at the start of a shard rather than at its end.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    longest = 0
    for index in order:
        length = max(1, lengths[index])
        grown = max(longest, length)
        too_many_tokens = max_batch_tokens is not None and grown * (len(batch) + 1) > max_batch_tokens
        if batch and (len(batch) >= batch_size or too_many_tokens):
            yield batch
            batch, grown = [], length
        batch.append(index)
        longest = grown
    if batch:
        yield batch


BatchObserver = Callable[[int, int, int, float], None]
"""Told after each model batch: its items, real tokens, padded tokens (items x longest) and seconds."""
_observers: list[BatchObserver] = []


def observe_batches(observer: BatchObserver) -> None:
    """Call ``observer`` after every model batch the engine runs (worker metrics use it)."""
    if observer not in _observers:
        _observers.append(observer)


def notify_batch(items: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
    """Tell every observer about one model batch (called by :mod:`jobs.engine.execution`)."""
    for observer in _observers:
        observer(items, real_tokens, padded_tokens, seconds)


# -- out of memory ---------------------------------------------------------------

R = TypeVar("R")
BatchProbe = Callable[[int], None]
batch_probe: BatchProbe | None = None
"""Called with a batch's row count before each try of :func:`run_splitting_on_oom`; it may raise an
out-of-memory error. None in production: only tests set it (:func:`jobs.testing.oom.oom_above`)."""


@dataclass(frozen=True)
class RowOutOfMemory:
    """Stands in for the result of a row that ran out of memory even alone."""

    message: str


class SimulatedOutOfMemory(RuntimeError):
    """Base of errors that stand in for a device running out of memory (``jobs.testing.oom``)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's CUDA/MPS out-of-memory errors and the simulated ones."""
    if isinstance(exc, SimulatedOutOfMemory) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_splitting_on_oom(
    fn: Callable[[list[int]], Sequence[R]], indices: Sequence[int]
) -> list[R | RowOutOfMemory]:
    """``fn(indices)``, one result per index; on out-of-memory, split the batch in halves.

    Each half is retried the same way, down to single rows; only a row that runs
    out of memory alone gets a :class:`RowOutOfMemory` in place of its result.
    Other exceptions propagate. Results come back in the order of ``indices``.
    """
    batch = list(indices)
    try:
        if batch_probe is not None:
            batch_probe(len(batch))
        results: list[R | RowOutOfMemory] = list(fn(batch))
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        # Split below, outside this block, so that the traceback and its tensors are freed first.
    else:
        if len(results) != len(batch):
            raise ValueError(f"batch function returned {len(results)} results for {len(batch)} rows")
        return results
    free_cached_device_memory()
    if len(batch) == 1:
        return [RowOutOfMemory("out of memory even for this row alone; lower max_length or use a larger GPU")]
    half = len(batch) // 2
    return run_splitting_on_oom(fn, batch[:half]) + run_splitting_on_oom(fn, batch[half:])


def free_cached_device_memory() -> None:
    """Give the CUDA caching allocator's free blocks back, where CUDA is in use (after an OOM, an eviction)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
