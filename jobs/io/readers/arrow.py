"""Arrow IPC: the random-access file format (Feather v2) and the stream format (``datasets`` caches).

Local files are memory-mapped, so counting rows or reading a range copies no text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.ipc as ipc

from jobs.io.readers.base import Reader
from jobs.io.storage import Storage

SUFFIXES = (".arrow", ".feather", ".ipc")
FILE_MAGIC = b"ARROW1"


def _open(storage: Storage, path: str) -> Any:
    return pa.memory_map(path) if not storage.remote else storage.fs.open(path, "rb")


class _ArrowIpcReader(Reader):
    """Both IPC formats; they differ only in how a file is opened and its batches are walked."""

    input_formats: ClassVar[tuple[str, ...]] = ("arrow", "datasets")
    suffixes: ClassVar[tuple[str, ...]] = SUFFIXES  # the same endings for both: the first bytes tell them apart
    open_ipc: ClassVar[Callable[[Any], Any]]

    def batches(self, reader: Any) -> Iterator[pa.RecordBatch]:
        return iter(reader)

    def describe(self, storage: Storage, path: str) -> tuple[int, pa.Schema | None]:
        with _open(storage, path) as source:
            return sum(batch.num_rows for batch in self.batches(type(self).open_ipc(source))), None

    def schema(self, storage: Storage, path: str) -> pa.Schema:
        with storage.fs.open(path, "rb") as handle:
            return type(self).open_ipc(handle).schema

    def read_range(self, storage: Storage, path: str, start: int, stop: int, columns: list[str]) -> pa.Table:
        with _open(storage, path) as source:
            table = type(self).open_ipc(source).read_all()
        return table.select(columns).slice(start, stop - start)


class ArrowFileReader(_ArrowIpcReader):
    name: ClassVar[str] = "arrow_file"
    magic: ClassVar[bytes | None] = FILE_MAGIC
    open_ipc = staticmethod(ipc.open_file)

    def batches(self, reader: Any) -> Iterator[pa.RecordBatch]:
        return (reader.get_batch(i) for i in range(reader.num_record_batches))


class ArrowStreamReader(_ArrowIpcReader):
    name: ClassVar[str] = "arrow_stream"  # no magic: the format an Arrow file that is not ARROW1 is
    open_ipc = staticmethod(ipc.open_stream)
