"""Parquet files: rows counted from the footer, a row range read from only the row groups it spans.

A row group is the smallest piece a range read decodes (pyarrow reads a row group's column chunks
whole), so planning cuts shards along row groups where it can (:mod:`producer.plan`) and the
footer's row-group sizes are the file's read units. The footer is the file's :meth:`~ParquetReader.index`:
a worker reads it once per file version, exactly (its length, then its bytes: pyarrow's own open
fetches the last 64 KB, a third of a 10,000-row shard's share of a 20 MB file), and opens every
later shard with it, so a shard fetches its row groups' chunks of the columns it reads and no more.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.io.readers.base import FileLayout, Reader
from jobs.io.storage import Storage

SUFFIXES = (".parquet", ".parq", ".pq")
MAGIC = b"PAR1"
TAIL = 4 + len(MAGIC)  # the footer's int32 length, then the magic


class ParquetReader(Reader):
    name: ClassVar[str] = "parquet"
    input_formats: ClassVar[tuple[str, ...]] = ("parquet",)
    suffixes: ClassVar[tuple[str, ...]] = SUFFIXES
    magic: ClassVar[bytes | None] = MAGIC
    unit: ClassVar[str] = "row group"
    rewrite_hint: ClassVar[str] = "pyarrow.parquet.write_table(table, path, row_group_size=N)"

    def layout(self, storage: Storage, path: str) -> FileLayout:
        with storage.open_ranges(path) as handle:
            metadata = pq.ParquetFile(handle).metadata
        units = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
        return FileLayout(rows=int(metadata.num_rows), schema=metadata.schema.to_arrow_schema(), units=units)

    def schema(self, storage: Storage, path: str) -> pa.Schema:
        with storage.open_ranges(path) as handle:
            return pq.read_schema(handle)

    def index(self, storage: Storage, path: str) -> pq.FileMetaData:
        """The footer, in two reads from the end of the file that fetch its bytes and no others."""
        if not storage.remote:
            return pq.read_metadata(path, memory_map=True)
        tail = storage.fs.cat_file(path, start=-TAIL)
        length = struct.unpack_from("<i", tail)[0] if len(tail) == TAIL and tail[4:] == MAGIC else -1
        if length <= 0:
            raise pa.ArrowInvalid(f"{path} does not end like a Parquet file (its last {TAIL} bytes: {tail!r})")
        footer = storage.fs.cat_file(path, start=-(TAIL + length))
        return pq.read_metadata(pa.BufferReader(footer))  # pyarrow reads a footer alone, never the row groups

    def read_range(self, storage: Storage, path: str, start: int, stop: int, columns: list[str],
                   index: Any = None) -> pa.Table:
        metadata: pq.FileMetaData = index if index is not None else self.index(storage, path)
        schema = metadata.schema.to_arrow_schema()
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise KeyError(missing[0])
        groups, first_row, offset = [], None, 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            if offset < stop and offset + rows > start:
                groups.append(group)
                first_row = offset if first_row is None else first_row
            offset += rows
        if not groups:
            return schema.empty_table().select(columns)
        with storage.open_ranges(path) as handle:  # pre_buffer: adjacent column chunks in one request
            table = pq.ParquetFile(handle, metadata=metadata, pre_buffer=True).read_row_groups(groups, columns=columns)
        assert first_row is not None
        return table.slice(start - first_row, stop - start)
