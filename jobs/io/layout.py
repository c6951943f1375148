"""The output layout and its commit protocol.

    OUTPUT/
      part-00000.parquet           one per shard, visible only when complete
      part-00001.parquet
      part-00001.r000001024.parquet  a later piece of a shard committed in pieces (jobs.io.pieces)
      _batchformers/
        manifest.json              spec, shard plan, input fingerprint, versions
        shards/00000.json          commit marker: rows, errors, seconds, worker, stage seconds, timing
        shards/00001.failed.json   why a shard failed for good
        pieces/00001/000001024.json  a piece's claim: rows [1024, stop) of shard 1 (jobs.io.pieces)
        _SUCCESS                   written exactly once, when every shard committed and the job succeeded
        _FAILED                    instead of _SUCCESS when every shard committed but too many rows
                                   have an error (max_error_rate): the totals and the reason
        CANCELLED                  present while the job is cancelled

A part is written under a hidden temporary name and renamed (local disks) or put
as one object (object stores), then its commit marker is written. Readers that
list ``*.parquet`` (pandas, polars, DuckDB, Spark, ``datasets``) never see a half
part, and names starting with ``_`` or ``.`` are ignored by them. A shard whose
marker exists is done; one whose part exists without a marker is simply
rewritten, byte-identical in content, when it runs again. A writer killed before its
rename leaves a hidden temporary (``.part-00000.parquet.<hex>.tmp``): the shard's next
commit deletes it, and no reader or count ever sees it (see :func:`is_data_file`).

``commit`` takes an optional ``fault`` hook, called as ``fault(shard, point)`` at each
:data:`COMMIT_POINTS` step; the reliability tests kill the worker there.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from jobs.errors import OutputError
from jobs.io.storage import Storage
from jobs.manifest import Manifest

if TYPE_CHECKING:
    import pyarrow as pa

META_DIR = "_batchformers"
SHARDS_DIR = f"{META_DIR}/shards"
MANIFEST_FILE = f"{META_DIR}/manifest.json"
SUCCESS_FILE = f"{META_DIR}/_SUCCESS"
FAILED_FILE = f"{META_DIR}/_FAILED"
CANCELLED_FILE = f"{META_DIR}/CANCELLED"
PARQUET_COMPRESSION = "zstd"
MARKER_READERS = 32  # markers read at once from an object store (a local disk reads them in turn)
PART_WRITTEN = "part-written"  # the part's bytes are in a hidden temporary file, not yet visible
PART_PUBLISHED = "part-published"  # the part is visible, its marker not yet written
COMMIT_POINTS = (PART_WRITTEN, PART_PUBLISHED)
CommitFault = Callable[[int, str], None]


def part_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def marker_parts(shard: int, marker: dict[str, Any]) -> list[str]:
    """The part names a commit marker stands for: its pieces' (in row order), else the shard's one part."""
    return list(marker.get("parts") or [marker.get("part") or part_name(shard)])


def marker_name(shard: int) -> str:
    return f"{shard:05d}.json"


def is_data_file(name: str) -> bool:
    """Whether readers of the output see ``name`` as data (hidden and ``_`` names they skip)."""
    return name.endswith(".parquet") and not name.startswith((".", "_"))


class OutputLayout:
    """Reads and writes one job's output location."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.storage = Storage.at(location)

    # -- manifest ------------------------------------------------------------

    def has_manifest(self) -> bool:
        return self.storage.exists(MANIFEST_FILE)

    def read_manifest(self) -> Manifest:
        try:
            return Manifest.from_json(self.storage.read_bytes(MANIFEST_FILE))
        except FileNotFoundError:
            raise OutputError(f"{self.location} holds no batchformers job (no {MANIFEST_FILE})") from None

    def write_manifest(self, manifest: Manifest) -> None:
        self.storage.write_atomic(manifest.to_json(), MANIFEST_FILE)

    def create_manifest(self, manifest: Manifest) -> bool:
        """Write the manifest of a fresh output; False when another submit's is there first."""
        return self.storage.create_once(manifest.to_json(), MANIFEST_FILE)

    def holds_job(self, job_id: str) -> bool:
        """Whether the manifest on storage (read afresh, never cached) is job ``job_id``'s."""
        try:
            return self.read_manifest().job_id == job_id
        except OutputError:
            return False

    def holds_other_data(self) -> bool:
        """True when the location has files that are not a batchformers job's (``_batchformers/`` without
        a manifest yet is a submit writing it now: the manifest's create-once decides between them)."""
        return any(name != META_DIR for name in self.storage.list()) and not self.has_manifest()

    # -- shards --------------------------------------------------------------

    def is_committed(self, shard: int) -> bool:
        return self.storage.exists(SHARDS_DIR, marker_name(shard))

    def commit(self, shard: int, table: pa.Table, summary: dict[str, Any], fault: CommitFault | None = None) -> None:
        """Publish the part, then its marker: the marker means the part is whole."""
        started = time.perf_counter()
        self.publish_part(shard, table, part_name(shard), fault)
        self.write_marker(shard, summary, [part_name(shard)], time.perf_counter() - started)

    def publish_part(self, shard: int, table: pa.Table, name: str, fault: CommitFault | None = None) -> None:
        """Write one part of ``shard`` (the whole shard's, or a piece's: :mod:`jobs.io.pieces`) atomically.

        Only the holder of the shard's lease writes it, so temporaries left by an earlier,
        killed run of the same part are deleted first.
        """
        self.storage.remove_temporaries(name)
        buffer = io.BytesIO()
        import pyarrow.parquet as pq  # here, not at import: status and jobs read layouts without pyarrow

        pq.write_table(table, buffer, compression=PARQUET_COMPRESSION)
        written = None if fault is None else (lambda: fault(shard, PART_WRITTEN))
        self.storage.write_atomic(buffer.getvalue(), name, before_publish=written)
        if fault is not None:
            fault(shard, PART_PUBLISHED)

    def write_marker(self, shard: int, summary: dict[str, Any], parts: list[str], write_seconds: float) -> None:
        """The shard's commit marker, once all its ``parts`` are published (``parts`` listed when more than one)."""
        self.storage.remove_temporaries(SHARDS_DIR, marker_name(shard))
        marker = {**summary, "shard": shard, "part": parts[0], "committed_at": time.time(),
                  "worker": socket.gethostname()}
        if len(parts) > 1:
            marker["parts"] = parts
        marker["stages"] = {**summary.get("stages", {}), "write": round(write_seconds, 4)}
        self.storage.write_atomic(json.dumps(marker).encode(), SHARDS_DIR, marker_name(shard))
        self.storage.remove(SHARDS_DIR, f"{shard:05d}.failed.json")

    def parts(self) -> dict[str, int]:
        """Every part in the output (pieces included) -> its shard, in row order, from one listing."""
        found: dict[str, int] = {}
        for name in self.storage.list():
            number = name[len("part-"):].split(".")[0]
            if is_data_file(name) and name.startswith("part-") and number.isdigit():
                found[name] = int(number)
        return found

    def mark_failed(self, shard: int, error: str, attempts: int) -> None:
        record = {"shard": shard, "error": error, "attempts": attempts, "failed_at": time.time(),
                  "worker": socket.gethostname()}
        self.storage.write_atomic(json.dumps(record).encode(), SHARDS_DIR, f"{shard:05d}.failed.json")

    def clear_failed(self, shard: int) -> None:
        self.storage.remove(SHARDS_DIR, f"{shard:05d}.failed.json")

    def committed(self) -> dict[int, dict[str, Any]]:
        return self._markers(lambda name: name.endswith(".json") and not name.endswith(".failed.json"))

    def failed(self) -> dict[int, dict[str, Any]]:
        return self._markers(lambda name: name.endswith(".failed.json"))

    def marker_numbers(self) -> tuple[set[int], set[int]]:
        """(committed, failed) shard numbers from one listing of the marker names; reads no marker."""
        committed: set[int] = set()
        failed: set[int] = set()
        for name in self.storage.list(SHARDS_DIR):
            number = name.split(".")[0]
            if not number.isdigit() or not name.endswith(".json"):
                continue
            (failed if name.endswith(".failed.json") else committed).add(int(number))
        return committed, failed

    def row_errors(self, shard: int) -> list[str | None]:
        """The ``error`` column of a shard's part. ``ParquetFile.read``, not ``pq.read_table``: that one imports
        pandas, which ``status`` and ``report`` must not pay for. FileNotFoundError once compacted away."""
        import pyarrow.parquet as pq

        marker = self.read_committed([shard]).get(shard, {})
        errors: list[str | None] = []
        for name in marker_parts(shard, marker):  # a shard committed in pieces: each of its parts, in order
            with self.storage.open(name) as handle:
                errors += pq.ParquetFile(handle).read(columns=["error"]).column("error").to_pylist()
        return errors

    def read_committed(self, shards: Iterable[int], threads: int = MARKER_READERS) -> dict[int, dict[str, Any]]:
        """The commit markers of ``shards`` (those that exist), read ``threads`` at a time."""
        return self._read_many([(shard, f"{shard:05d}.json") for shard in shards], threads)

    def read_failed(self, shards: Iterable[int], threads: int = MARKER_READERS) -> dict[int, dict[str, Any]]:
        """The failure markers of ``shards`` (those that exist), read ``threads`` at a time."""
        return self._read_many([(shard, f"{shard:05d}.failed.json") for shard in shards], threads)

    def _read_many(self, wanted: list[tuple[int, str]], threads: int) -> dict[int, dict[str, Any]]:
        def read(item: tuple[int, str]) -> tuple[int, dict[str, Any] | None]:
            try:
                return item[0], json.loads(self.storage.read_bytes(SHARDS_DIR, item[1]))
            except FileNotFoundError:
                return item[0], None

        if len(wanted) <= 1 or not self.storage.remote:
            found = map(read, wanted)
            return {shard: marker for shard, marker in found if marker is not None}
        with ThreadPoolExecutor(max(1, min(threads, len(wanted)))) as pool:
            return {shard: marker for shard, marker in pool.map(read, wanted) if marker is not None}

    def _markers(self, wanted: Any) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for name in self.storage.list(SHARDS_DIR):
            if wanted(name):
                found[int(name.split(".")[0])] = json.loads(self.storage.read_bytes(SHARDS_DIR, name))
        return found

    # -- job state -----------------------------------------------------------

    def mark_complete(self, summary: dict[str, Any]) -> bool:
        """Write _SUCCESS; True only for the one caller that wrote it."""
        return self.storage.create_once(json.dumps(summary).encode(), SUCCESS_FILE)

    def mark_job_failed(self, summary: dict[str, Any]) -> bool:
        """Write _FAILED (the totals and ``summary["reason"]``); True only for the one caller that wrote it."""
        return self.storage.create_once(json.dumps(summary).encode(), FAILED_FILE)

    def is_complete(self) -> bool:
        """The job succeeded: its _SUCCESS is there."""
        return self.storage.exists(SUCCESS_FILE)

    def is_finished(self) -> bool:
        """Every shard committed and the outcome written: _SUCCESS or _FAILED."""
        return self.is_complete() or self.storage.exists(FAILED_FILE)

    def completion(self) -> dict[str, Any] | None:
        """The totals in _SUCCESS; None without one."""
        return self._read_json(SUCCESS_FILE)

    def job_failure(self) -> dict[str, Any] | None:
        """The totals and reason in _FAILED; None without one."""
        return self._read_json(FAILED_FILE)

    def _read_json(self, name: str) -> dict[str, Any] | None:
        try:
            loaded: dict[str, Any] = json.loads(self.storage.read_bytes(name))
        except FileNotFoundError:
            return None
        return loaded

    def cancel(self) -> None:
        self.storage.write_atomic(json.dumps({"cancelled_at": time.time()}).encode(), CANCELLED_FILE)

    def uncancel(self) -> None:
        self.storage.remove(CANCELLED_FILE)

    def is_cancelled(self) -> bool:
        return self.storage.exists(CANCELLED_FILE)
