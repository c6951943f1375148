"""The plan's sample is spread over the whole input (every file, its start, middle and end), not its head."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.io.sample import read_sample, spread_ranges
from jobs.io.sources import discover


def test_small_inputs_are_read_whole() -> None:
    assert spread_ranges([5, 0, 7], 100) == [(0, 0, 5), (2, 0, 7)]


def test_ranges_spread_over_every_file() -> None:
    ranges = spread_ranges([1000, 9000], 100, windows=10)
    assert sum(stop - start for _, start, stop in ranges) == 100
    assert {index for index, _, _ in ranges} == {0, 1}
    assert ranges[0][1] == 0 and ranges[-1] == (1, 8990, 9000)  # the first rows and the last ones


def test_read_sample_reads_rows_from_the_whole_input(tmp_path: Path) -> None:
    for name, first in (("a", 0), ("b", 5000)):
        pq.write_table(pa.table({"n": list(range(first, first + 5000))}), tmp_path / f"{name}.parquet",
                       row_group_size=500)
    sources = discover(str(tmp_path))
    numbers = read_sample(sources, ["n"], 320).column("n").to_pylist()
    assert len(numbers) == 320 and len(set(numbers)) == 320
    assert min(numbers) == 0 and max(numbers) == 9999
    assert sum(1 for n in numbers if n >= 5000) >= 150  # half of it from the second file
