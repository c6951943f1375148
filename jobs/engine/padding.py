"""The one padding helper: rows of unequal length as one array and its attention mask, without a loop per row."""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized
from itertools import chain
from typing import Any

import numpy as np


def lengths_of(rows: Iterable[Sized]) -> np.ndarray:
    """Each row's length, as int64 (what :func:`pad` and :func:`attention_mask` work from)."""
    return np.fromiter(map(len, rows), dtype=np.int64)


def pad(rows: Sequence[Sequence[int]], fill: int, side: str = "right", dtype: Any = np.int64) -> np.ndarray:
    """Rows of unequal length as one array, padded on the right or the left, without a loop per row."""
    lengths = lengths_of(rows)
    longest = int(lengths.max()) if len(rows) else 0
    array = np.full((len(rows), longest), fill, dtype=dtype)
    filled = _filled(lengths, longest, side)  # the side is checked even when there is nothing to fill
    if longest:
        flat, count = chain.from_iterable(rows), int(lengths.sum())
        array[filled] = np.fromiter(flat, dtype, count)  # pragma: no mutate - count: a size hint, twice as fast
    return array


def attention_mask(lengths: np.ndarray, side: str = "right") -> np.ndarray:
    """1 on real tokens, 0 on padding, for rows of ``lengths``."""
    longest = int(lengths.max()) if len(lengths) else 0
    return _filled(lengths, longest, side).astype(np.int64)


def _filled(lengths: np.ndarray, longest: int, side: str) -> np.ndarray:
    """Where the real tokens are: a typo in ``side`` is an error, not a silent right padding."""
    positions = np.arange(longest)[None, :]
    if side == "right":
        return positions < lengths[:, None]
    if side == "left":
        return positions >= (longest - lengths)[:, None]
    raise ValueError(f"padding side must be 'left' or 'right', not {side!r}")
