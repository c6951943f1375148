"""The interface of an input file reader: count its rows, read its schema, read a row range.

One subclass per file format, one module each, registered in :mod:`jobs.io.readers` under
the name a manifest's :class:`~jobs.io.sources.SourceFile` stores as its ``format``.
Planning calls :meth:`Reader.describe` (metadata only); a worker calls :meth:`Reader.read_range`
for just its rows and columns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import pyarrow as pa

from jobs.io.storage import Storage


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

    @abstractmethod
    def describe(self, storage: Storage, path: str) -> tuple[int, pa.Schema | None]:
        """(row count, the schema when reading the count gave it for free) from the file's metadata."""

    @abstractmethod
    def schema(self, storage: Storage, path: str) -> pa.Schema:
        """The file's Arrow schema."""

    @abstractmethod
    def read_range(self, storage: Storage, path: str, start: int, stop: int, columns: list[str]) -> pa.Table:
        """Rows ``[start, stop)`` of ``columns``, reading little else; KeyError for a missing column."""
