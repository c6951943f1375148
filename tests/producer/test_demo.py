"""The demo's own reading of the output: the parts in row order, pieces included, without pandas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from producer.demo import output_table


def test_the_demo_reads_parts_and_pieces_in_row_order(tmp_path: Path) -> None:
    for name, ids in (("part-00001.parquet", [4]), ("part-00000.r000000002.parquet", [2, 3]),
                      ("part-00000.parquet", [0, 1])):
        pq.write_table(pa.table({"id": ids}), tmp_path / name)
    (tmp_path / "_SUCCESS").write_text("{}")
    assert output_table(tmp_path).column("id").to_pylist() == [0, 1, 2, 3, 4]


def test_the_demo_module_imports_no_pyarrow_or_pandas_before_the_run() -> None:
    """pyarrow.dataset brings pandas: imported before the run, it delayed the workers' start by a second."""
    code = "import sys, producer.demo; print(sorted({'pyarrow', 'pandas', 'torch'} & set(sys.modules)))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"
