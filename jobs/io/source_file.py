"""One input file as the manifest records it: standard library only, so that reading a manifest
(``status``, ``jobs``) does not import pyarrow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceFile:
    """One input file with what planning needs to know about it."""

    url: str
    format: str  # "parquet" | "arrow_file" | "arrow_stream"
    num_rows: int
    size: int
    modified: str

    def identity(self) -> str:
        return f"{self.url}|{self.size}|{self.modified}|{self.num_rows}"
