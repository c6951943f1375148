"""The interface of an input file reader: count its rows, read its schema, read a row range.

One subclass per file format, one module each, registered in :mod:`jobs.io.readers` under
the name a manifest's :class:`~jobs.io.sources.SourceFile` stores as its ``format``.
Planning calls :meth:`Reader.layout` (metadata only: rows, schema, the pieces a range read
decodes whole); a worker calls :meth:`Reader.read_range` for just its rows and columns, with the
file's :meth:`Reader.index` that it remembers per file version (:func:`jobs.io.sources.read_rows`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from jobs.io.storage import Storage


@dataclass(frozen=True)
class FileLayout:
    """What a file's metadata says about reading it: what planning needs."""

    rows: int
    schema: pa.Schema | None
    """The schema, when reading the rows gave it for free."""
    units: tuple[int, ...] | None
    """Rows of each piece that a range read decodes whole (Parquet row groups, IPC record batches),
    in file order; None when a range is read by walking the file from its start (an IPC stream)."""


class Reader(ABC):
    """Reads one file format. Stateless: one instance serves every file."""

    name: ClassVar[str]
    """What a manifest stores as the file's ``format``."""
    input_formats: ClassVar[tuple[str, ...]]
    """The spec's ``input_format`` values that may mean this format (``auto`` always may)."""
    suffixes: ClassVar[tuple[str, ...]] = ()
    """File name endings of the format: a directory's data files; under ``auto`` the format when only
    this reader claims the ending."""
    magic: ClassVar[bytes | None] = None
    """The bytes the file starts with; None for a format without one (tried last)."""
    unit: ClassVar[str] = "piece"
    """What the format's read units are called (a Parquet "row group")."""
    rewrite_hint: ClassVar[str] = ""
    """How to rewrite a file with read units of at most N rows, for submit's warning."""

    def probe(self, storage: Storage, path: str) -> tuple[int, pa.Schema | None]:
        """(row count, the schema when reading the count gave it for free) from the file's metadata."""
        layout = self.layout(storage, path)
        return layout.rows, layout.schema

    @abstractmethod
    def layout(self, storage: Storage, path: str) -> FileLayout:
        """Rows, schema (if free) and read units, from the file's metadata only."""

    @abstractmethod
    def schema(self, storage: Storage, path: str) -> pa.Schema:
        """The file's Arrow schema."""

    def index(self, storage: Storage, path: str) -> Any:
        """What :meth:`read_range` reads from the file's metadata before any row (a Parquet footer,
        an Arrow file's batch headers), for a worker to read once per file version and hand back;
        None where that is nothing worth remembering."""
        return None

    @abstractmethod
    def read_range(self, storage: Storage, path: str, start: int, stop: int, columns: list[str],
                   index: Any = None) -> pa.Table:
        """Rows ``[start, stop)`` of ``columns``, reading little else; KeyError for a missing column.
        ``index`` is what :meth:`index` returned for this file (read again when None)."""
