"""Row validation and length-sorted batching shared by every task type."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

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
