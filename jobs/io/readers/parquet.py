"""Parquet files: rows counted from the footer, a row range read from only the row groups it spans."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.io.readers.base import Reader
from jobs.io.storage import Storage

SUFFIXES = (".parquet", ".parq", ".pq")
MAGIC = b"PAR1"


class ParquetReader(Reader):
    name: ClassVar[str] = "parquet"
    input_formats: ClassVar[tuple[str, ...]] = ("parquet",)
    suffixes: ClassVar[tuple[str, ...]] = SUFFIXES
    magic: ClassVar[bytes | None] = MAGIC

    def describe(self, storage: Storage, path: str) -> tuple[int, pa.Schema | None]:
        with storage.fs.open(path, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
        return int(metadata.num_rows), metadata.schema.to_arrow_schema()

    def schema(self, storage: Storage, path: str) -> pa.Schema:
        with storage.fs.open(path, "rb") as handle:
            return pq.read_schema(handle)

    def read_range(self, storage: Storage, path: str, start: int, stop: int, columns: list[str]) -> pa.Table:
        with storage.fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            missing = [c for c in columns if c not in parquet.schema_arrow.names]
            if missing:
                raise KeyError(missing[0])
            groups, first_row, offset = [], None, 0
            for index in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(index).num_rows
                if offset < stop and offset + rows > start:
                    groups.append(index)
                    first_row = offset if first_row is None else first_row
                offset += rows
            if not groups:
                return parquet.schema_arrow.empty_table().select(columns)
            table = parquet.read_row_groups(groups, columns=columns)
        assert first_row is not None
        return table.slice(start - first_row, stop - start)
