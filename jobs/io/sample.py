"""A sample of a job's input spread over all of it, not its head: for ``batchformers plan``.

The sample is ``WINDOWS`` runs of consecutive rows at evenly spaced places across the input
(across its files, in input order), so that a file sorted by length or by source is sampled
at every part; each run is one range read (:func:`jobs.io.sources.read_rows`), as a shard reads.
An input no larger than the sample is read whole.
"""

from __future__ import annotations

import pyarrow as pa

from jobs.io.sources import SourceFile, read_rows

WINDOWS = 32


def spread_ranges(sizes: list[int], wanted: int, windows: int = WINDOWS) -> list[tuple[int, int, int]]:
    """(file, start, stop) ranges of about ``wanted`` rows in all, ``windows`` of them evenly spaced over
    files of ``sizes`` rows; every row when there are no more than ``wanted``."""
    total = sum(sizes)
    if total <= wanted:
        return [(index, 0, size) for index, size in enumerate(sizes) if size]
    windows = max(1, min(windows, wanted))
    length = max(1, wanted // windows)
    starts = [int(i * (total - length) / max(1, windows - 1)) for i in range(windows)] if windows > 1 else [0]
    ranges: list[tuple[int, int, int]] = []
    for start in starts:
        ranges.extend(_split(sizes, start, start + length))
    return _merged(ranges)


def _split(sizes: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """Global rows ``[start, stop)`` as per-file ranges."""
    found = []
    offset = 0
    for index, size in enumerate(sizes):
        low, high = max(start, offset), min(stop, offset + size)
        if low < high:
            found.append((index, low - offset, high - offset))
        offset += size
    return found


def _merged(ranges: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    merged: list[tuple[int, int, int]] = []
    for index, start, stop in sorted(ranges):
        if merged and merged[-1][0] == index and start <= merged[-1][2]:
            merged[-1] = (index, merged[-1][1], max(stop, merged[-1][2]))
        else:
            merged.append((index, start, stop))
    return merged


def read_sample(sources: list[SourceFile], columns: list[str], wanted: int) -> pa.Table:
    """About ``wanted`` rows of ``columns``, spread over every file of ``sources``."""
    ranges = spread_ranges([source.num_rows for source in sources], wanted)
    tables = [read_rows(sources[index], start, stop, columns) for index, start, stop in ranges]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({column: [] for column in columns})
