"""Arrow IPC: the random-access file format (Feather v2) and the stream format (``datasets`` caches).

A file's footer lists its record batches, so a range read fetches only the batches it overlaps
(and of those only the columns asked for); the rows of each batch come from the batch headers
(:mod:`.ipc_index`). A stream has no footer: a range is read by walking the batches from the
start and stopping after the range, so a shard late in a large stream on object storage
downloads everything before it (``producer.plan`` warns at submit). Local files are
memory-mapped, so counting rows or reading a range copies no text.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.ipc as ipc

from jobs.io.readers.base import FileLayout, Reader
from jobs.io.readers.ipc_index import FILE_MAGIC, IpcLayoutError, batch_rows
from jobs.io.storage import Storage

SUFFIXES = (".arrow", ".feather", ".ipc")


class _ArrowIpcReader(Reader):
    input_formats: ClassVar[tuple[str, ...]] = ("arrow", "datasets")
    unit: ClassVar[str] = "record batch"
    rewrite_hint: ClassVar[str] = "pyarrow.feather.write_feather(table, path, chunksize=N)"
    suffixes: ClassVar[tuple[str, ...]] = SUFFIXES  # the same endings for both: the first bytes tell them apart


class ArrowFileReader(_ArrowIpcReader):
    name: ClassVar[str] = "arrow_file"
    magic: ClassVar[bytes | None] = FILE_MAGIC

    def layout(self, storage: Storage, path: str) -> FileLayout:
        units = _batch_rows(storage, path)
        return FileLayout(rows=sum(units), schema=None, units=tuple(units))

    def schema(self, storage: Storage, path: str) -> pa.Schema:
        with storage.open_ranges(path) as source:
            return ipc.open_file(source).schema

    def index(self, storage: Storage, path: str) -> tuple[tuple[int, ...], pa.Schema]:
        """The rows of each record batch (a read of every batch header) and the schema (a read of the
        footer): not worth repeating per shard, and the schema picks the columns before the file is opened."""
        return tuple(_batch_rows(storage, path)), self.schema(storage, path)

    def read_range(self, storage: Storage, path: str, start: int, stop: int, columns: list[str],
                   index: Any = None) -> pa.Table:
        units, schema = index if index is not None else self.index(storage, path)
        offsets = list(itertools.accumulate(units, initial=0))
        first = max(bisect.bisect_right(offsets, start) - 1, 0)
        last = bisect.bisect_left(offsets, stop)  # batches [first, last) hold rows [start, stop)
        fields = [schema.get_field_index(column) for column in columns]
        if -1 in fields:
            raise KeyError(columns[fields.index(-1)])
        with storage.open_ranges(path) as source:
            reader = ipc.open_file(source, options=ipc.IpcReadOptions(included_fields=sorted(set(fields))))
            batches = [reader.get_batch(i) for i in range(first, min(last, reader.num_record_batches))]
            read = pa.Table.from_batches(batches, schema=reader.schema)
        return read.select(columns).slice(start - offsets[first], stop - start)


class ArrowStreamReader(_ArrowIpcReader):
    name: ClassVar[str] = "arrow_stream"  # no magic: the format an Arrow file that is not ARROW1 is

    def layout(self, storage: Storage, path: str) -> FileLayout:
        with _open_stream(storage, path) as source:
            rows = sum(batch.num_rows for batch in ipc.open_stream(source))
        return FileLayout(rows=rows, schema=None, units=None)

    def schema(self, storage: Storage, path: str) -> pa.Schema:
        with storage.fs.open(path, "rb") as handle:
            return ipc.open_stream(handle).schema

    def read_range(self, storage: Storage, path: str, start: int, stop: int, columns: list[str],
                   index: Any = None) -> pa.Table:
        with _open_stream(storage, path) as source:
            reader = ipc.open_stream(source)
            missing = [c for c in columns if c not in reader.schema.names]
            if missing:
                raise KeyError(missing[0])
            batches, offset = [], 0
            for batch in reader:  # no footer: walk from the start, and stop once past the range
                if offset + batch.num_rows > start:
                    batches.append(batch.select(columns))
                offset += batch.num_rows
                if offset >= stop:
                    break
            first_row = offset - sum(batch.num_rows for batch in batches)
            read = pa.Table.from_batches(batches, schema=pa.schema([reader.schema.field(c) for c in columns]))
        return read.slice(start - first_row, stop - start)


def _batch_rows(storage: Storage, path: str) -> list[int]:
    try:
        return batch_rows(storage, path)
    except (IpcLayoutError, struct.error) as exc:  # struct.error: a truncated footer
        raise pa.ArrowInvalid(f"{path} is not a readable Arrow IPC file: {exc}") from exc


def _open_stream(storage: Storage, path: str) -> pa.NativeFile:
    """Memory-mapped locally; on object storage read in order, where fsspec's read-ahead helps."""
    return pa.memory_map(path) if not storage.remote else storage.fs.open(path, "rb")
