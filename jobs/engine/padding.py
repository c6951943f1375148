"""The one padding helper: rows of unequal length as one array and its attention mask, without a loop per row."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np


def pad(rows: Sequence[Sequence[int]], fill: int, side: str = "right",
        lengths: np.ndarray | None = None, dtype: Any = np.int64) -> np.ndarray:
    """Rows of unequal length as one array, padded on the right or the left, without a loop per row."""
    if lengths is None:
        lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    longest = int(lengths.max()) if len(rows) else 0
    array = np.full((len(rows), longest), fill, dtype=dtype)
    if longest:
        flat = np.fromiter(chain.from_iterable(rows), dtype=dtype, count=int(lengths.sum()))
        array[_filled(lengths, longest, side)] = flat
    return array


def attention_mask(lengths: np.ndarray, side: str = "right") -> np.ndarray:
    """1 on real tokens, 0 on padding, for rows of ``lengths``."""
    longest = int(lengths.max()) if len(lengths) else 0
    return _filled(lengths, longest, side).astype(np.int64)


def _filled(lengths: np.ndarray, longest: int, side: str) -> np.ndarray:
    positions = np.arange(longest)[None, :]
    if side == "left":
        return positions >= (longest - lengths)[:, None]
    return positions < lengths[:, None]
