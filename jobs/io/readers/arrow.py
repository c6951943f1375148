"""Arrow IPC: the random-access file format (Feather v2) and the stream format (``datasets`` caches).

Local files are memory-mapped, so counting rows or reading a range copies no text.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.ipc as ipc

from jobs.io.readers.base import Reader
from jobs.io.storage import Storage

SUFFIXES = (".arrow", ".feather", ".ipc")
FILE_MAGIC = b"ARROW1"


def _open(storage: Storage, path: str) -> Any:
    return pa.memory_map(path) if not storage.remote else storage.fs.open(path, "rb")


class ArrowFileReader(Reader):
    name: ClassVar[str] = "arrow_file"
    input_formats: ClassVar[tuple[str, ...]] = ("arrow", "datasets")
    suffixes: ClassVar[tuple[str, ...]] = SUFFIXES
    magic: ClassVar[bytes | None] = FILE_MAGIC

    def describe(self, storage: Storage, path: str) -> tuple[int, pa.Schema | None]:
        with _open(storage, path) as source:
            reader = ipc.open_file(source)
            return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches)), None

    def schema(self, storage: Storage, path: str) -> pa.Schema:
        with storage.fs.open(path, "rb") as handle:
            return ipc.open_file(handle).schema

    def read_range(self, storage: Storage, path: str, start: int, stop: int, columns: list[str]) -> pa.Table:
        with _open(storage, path) as source:
            table = ipc.open_file(source).read_all()
        return table.select(columns).slice(start, stop - start)


class ArrowStreamReader(Reader):
    name: ClassVar[str] = "arrow_stream"
    input_formats: ClassVar[tuple[str, ...]] = ("arrow", "datasets")
    suffixes: ClassVar[tuple[str, ...]] = SUFFIXES  # the same endings: the first bytes tell them apart

    def describe(self, storage: Storage, path: str) -> tuple[int, pa.Schema | None]:
        with _open(storage, path) as source:
            return sum(batch.num_rows for batch in ipc.open_stream(source)), None

    def schema(self, storage: Storage, path: str) -> pa.Schema:
        with storage.fs.open(path, "rb") as handle:
            return ipc.open_stream(handle).schema

    def read_range(self, storage: Storage, path: str, start: int, stop: int, columns: list[str]) -> pa.Table:
        with _open(storage, path) as source:
            table = ipc.open_stream(source).read_all()
        return table.select(columns).slice(start, stop - start)
