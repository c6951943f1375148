"""The rows of each record batch of an Arrow IPC file, from its footer and message headers only.

pyarrow reads one batch by index (``RecordBatchFileReader.get_batch``) but cannot say how many
rows a batch holds without reading its body (``count_rows`` reads every body). The row count is
in each batch's message header, a small flatbuffer whose place the file's footer lists, so this
module reads the footer and those headers and nothing else: on object storage a few hundred bytes
per batch, fetched concurrently. The layouts read are Arrow's ``File.fbs`` and ``Message.fbs``:

- the file ends with the footer flatbuffer, its int32 length and ``ARROW1``;
- ``Footer`` field 3 is ``recordBatches``, a vector of ``Block`` structs (int64 offset, int32
  metadata length, 4 bytes of padding, int64 body length);
- at a block's offset: ``0xFFFFFFFF``, an int32 length (pre-1.0 files: the length alone), then a
  ``Message`` flatbuffer whose field 1 is the header type (3: ``RecordBatch``) and field 2 the
  header, a ``RecordBatch`` table whose field 0 is ``length``, its rows.
"""

from __future__ import annotations

import struct
from typing import Any

from jobs.io.storage import Storage

FILE_MAGIC = b"ARROW1"
TAIL = 4 + len(FILE_MAGIC)  # the footer's int32 length, then the magic
CONTINUATION = b"\xff\xff\xff\xff"
RECORD_BATCH = 3  # MessageHeader union: NONE, Schema, DictionaryBatch, RecordBatch, ...
FOOTER_RECORD_BATCHES = 3
MESSAGE_HEADER_TYPE, MESSAGE_HEADER = 1, 2
BLOCK = struct.Struct("<qi4xq")  # offset, metadata length, padding, body length


class IpcLayoutError(ValueError):
    """Raised when an IPC file's footer or a message header is not what the Arrow format says."""


def batch_rows(storage: Storage, path: str) -> list[int]:
    """Rows of each record batch of the IPC file at ``path``, in file order."""
    size = int(storage.fs.size(path))
    if size < len(FILE_MAGIC) + TAIL:
        raise IpcLayoutError(f"{path} is too short for an Arrow IPC file")
    tail = _ranges(storage, path, [(size - TAIL, size)])[0]
    if tail[4:] != FILE_MAGIC:
        raise IpcLayoutError(f"{path} does not end with {FILE_MAGIC!r}")
    footer_length = struct.unpack_from("<i", tail)[0]
    footer_start = size - TAIL - footer_length
    if footer_length <= 0 or footer_start < len(FILE_MAGIC):
        raise IpcLayoutError(f"{path} has a footer length of {footer_length}")
    footer = _ranges(storage, path, [(footer_start, size - TAIL)])[0]
    blocks = _blocks(footer)
    headers = _ranges(storage, path, [(offset, offset + length) for offset, length in blocks])
    return [_batch_length(header) for header in headers]


def _ranges(storage: Storage, path: str, spans: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each ``(start, stop)`` span: one concurrent call on object storage."""
    if not spans:
        return []
    if storage.remote:
        data: list[bytes] = storage.fs.cat_ranges([path] * len(spans), [a for a, _ in spans], [b for _, b in spans])
        return data
    with open(path, "rb") as handle:
        out = []
        for start, stop in spans:
            handle.seek(start)
            out.append(handle.read(stop - start))
        return out


def _blocks(footer: bytes) -> list[tuple[int, int]]:
    """(offset, metadata length) of every record batch the footer lists."""
    table = _root(footer)
    vector = _field_target(footer, table, FOOTER_RECORD_BATCHES)
    if vector is None:
        return []
    count = _u32(footer, vector)
    return [BLOCK.unpack_from(footer, vector + 4 + i * BLOCK.size)[:2] for i in range(count)]


def _batch_length(header: bytes) -> int:
    """The ``length`` of the RecordBatch message whose encapsulated header is ``header``."""
    start = 8 if header.startswith(CONTINUATION) else 4
    message = header[start:]
    table = _root(message)
    kind = _scalar(message, table, MESSAGE_HEADER_TYPE, "<B")
    if kind != RECORD_BATCH:
        raise IpcLayoutError(f"a footer block holds a message of type {kind}, not a record batch")
    batch = _field_target(message, table, MESSAGE_HEADER)
    if batch is None:
        raise IpcLayoutError("a record batch message has no header")
    return int(_scalar(message, batch, 0, "<q"))


def _root(buffer: bytes) -> int:
    return _u32(buffer, 0)


def _u32(buffer: bytes, at: int) -> int:
    value: int = struct.unpack_from("<I", buffer, at)[0]
    return value


def _field_offset(buffer: bytes, table: int, field: int) -> int:
    """Where ``field`` of the table at ``table`` is stored, relative to the table; 0 when absent."""
    vtable = table - struct.unpack_from("<i", buffer, table)[0]
    vtable_size = struct.unpack_from("<H", buffer, vtable)[0]
    entry = 4 + 2 * field
    if entry + 2 > vtable_size:
        return 0
    offset: int = struct.unpack_from("<H", buffer, vtable + entry)[0]
    return offset


def _scalar(buffer: bytes, table: int, field: int, fmt: str) -> Any:
    offset = _field_offset(buffer, table, field)
    return struct.unpack_from(fmt, buffer, table + offset)[0] if offset else 0


def _field_target(buffer: bytes, table: int, field: int) -> int | None:
    """Where the table or vector that ``field`` points to starts; None when the field is absent."""
    offset = _field_offset(buffer, table, field)
    if not offset:
        return None
    return table + offset + _u32(buffer, table + offset)
