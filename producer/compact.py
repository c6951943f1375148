"""``batchformers compact OUTPUT``: merge a finished job's many small parts into a few large ones.

A job of many small shards leaves many small Parquet files, and every reader pays per
file (an open, a footer, a request on object storage). Compaction rewrites runs of
consecutive parts into parts of about ``target_bytes`` each, in shard order, so rows
stay in ``row_index`` order; each new part takes the name of the first part it
replaces (``part-00000.parquet`` then holds shards 0 to k), so names still sort in
row order and ``inspect`` still finds the first rows.

All or nothing, in three steps, safe against a crash or a power loss at any point:

1. the new parts are written under ``_batchformers/compact/`` (hidden from readers) and
   made durable (fsync of each file and of the folder on a local disk; an object put is
   durable once it returns);
2. ``_batchformers/compaction.json`` is written in one put and made durable: the commit
   point. Until it exists the output is untouched, and an interrupted run leaves only
   hidden files;
3. each new part is moved over the first part it replaces, the moves are made durable,
   the rest are deleted, then the journal is marked done. A run interrupted here is
   finished by running ``compact`` again, which reads the journal and rolls forward.

One ``compact`` at a time: each takes ``_batchformers/compact.lock`` with the storage's
create-once (a second one is refused while it is held). The lock of a ``compact`` that
was killed on this machine (its process is gone) is taken over; on object storage, or from
another machine, a stale lock is deleted by hand.

Readers that list the directory during step 3 (seconds) may see a group's rows both
in its new part and in a part not yet deleted: compact while nobody reads the output.
The commit markers are kept (they are what makes a resubmit skip the shards); the
journal says which part now holds each shard.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.errors import OutputError
from jobs.io.layout import META_DIR, PARQUET_COMPRESSION, OutputLayout, part_name
from jobs.io.storage import Storage
from jobs.manifest import Manifest

COMPACT_DIR = f"{META_DIR}/compact"
JOURNAL_FILE = f"{META_DIR}/compaction.json"
LOCK_FILE = f"{META_DIR}/compact.lock"
LOCK_TRIES = 3
FAULTS_ENV = "BATCHFORMERS_TEST_FAULTS"  # as in worker/faults.py: `compact-kill=POINT`, `compact-sleep=POINT`
FAULT_SLEEP = 3.0
STAGED_ONE, STAGED, JOURNALED, MOVED, DELETING, ROLLED = (
    "staged-one", "staged", "journaled", "moved", "deleting", "rolled")
FAULT_POINTS = (STAGED_ONE, STAGED, JOURNALED, MOVED, DELETING, ROLLED)
"""Where a test may kill ``compact``: one group staged; all staged, no journal; the journal written, nothing
moved; the parts moved, none deleted; one part deleted; all done but the journal's ``done``."""
DEFAULT_TARGET_BYTES = 256 * 2**20
ROW_GROUP_ROWS = 100_000


@dataclass(frozen=True)
class Compaction:
    output: str
    parts_before: int
    parts_after: int
    rows: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_groups(sizes: list[int], target_bytes: int) -> list[list[int]]:
    """Consecutive shard numbers grouped so that each group's parts add up to about ``target_bytes``."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for shard, size in enumerate(sizes):
        if current and total + size > target_bytes:
            groups.append(current)
            current, total = [], 0
        current.append(shard)
        total += size
    if current:
        groups.append(current)
    return groups


def compact(output: str, target_bytes: int = DEFAULT_TARGET_BYTES, log: Any = None) -> Compaction:
    """Compact the finished job at ``output``; OutputError when it is not finished or another compact runs."""
    layout = OutputLayout(output)
    manifest = layout.read_manifest()  # OutputError when the location holds no job
    with _locked(layout.storage, output):
        return _compact(layout, manifest, target_bytes, log)


def _compact(layout: OutputLayout, manifest: Manifest, target_bytes: int, log: Any) -> Compaction:
    started = time.perf_counter()
    output = layout.location
    storage = layout.storage
    journal = _journal(layout)
    if journal is None or journal.get("done"):
        if not layout.is_finished():
            raise OutputError(f"{output} is not complete (no _batchformers/_SUCCESS or _FAILED); "
                              "compact a finished job")
        shards = len(manifest.shards)
        current = journal["parts"] if journal else _parts(layout, shards)
        sizes = {name: int(storage.fs.size(storage.path(name))) for name in current}
        # Parts already merged count with their size; group whole existing parts, in order.
        names = sorted(current, key=lambda name: current[name][0])
        groups = [[names[i] for i in group] for group in plan_groups([sizes[n] for n in names], target_bytes)]
        if all(len(group) == 1 for group in groups):
            return Compaction(output, len(names), len(names), manifest.total_rows, time.perf_counter() - started)
        storage.makedirs(COMPACT_DIR)
        new_parts: dict[str, list[int]] = {}
        for number, group in enumerate(groups):
            shards_in = list(dict.fromkeys(shard for name in group for shard in current[name]))
            if len(group) > 1:
                _merge(layout, group, f"{COMPACT_DIR}/{group[0]}")
                storage.sync(COMPACT_DIR, group[0])  # whole on disk before the journal can name it
                _fault(STAGED_ONE)
                if log:
                    log(f"compact: group {number + 1} of {len(groups)}: {len(group)} parts -> {group[0]}")
            new_parts[group[0]] = shards_in
        _fault(STAGED)
        journal = {"job_id": manifest.job_id, "parts": new_parts, "replaces": {g[0]: g for g in groups if len(g) > 1},
                   "parts_before": len(names), "created_at": time.time(), "done": False}
        storage.write_atomic(json.dumps(journal).encode(), JOURNAL_FILE)  # the commit point
        storage.sync_folder(META_DIR)
        _fault(JOURNALED)
    _roll_forward(layout, journal)
    return Compaction(output, int(journal["parts_before"]), len(journal["parts"]), manifest.total_rows,
                      time.perf_counter() - started)


def _parts(layout: OutputLayout, shards: int) -> dict[str, list[int]]:
    """The parts before a first compaction: one per shard, or its pieces (``jobs.io.pieces``), in row order."""
    found = {name: [shard] for name, shard in layout.parts().items() if shard < shards}
    return found or {part_name(i): [i] for i in range(shards)}


def _merge(layout: OutputLayout, names: list[str], target: str) -> int:
    """Concatenate the parts ``names`` (in order) into ``target``, in row groups of ``ROW_GROUP_ROWS``."""
    storage = layout.storage
    writer: pq.ParquetWriter | None = None
    pending: list[pa.Table] = []
    buffered = rows = 0

    def flush() -> None:
        nonlocal writer, pending, buffered
        table = pa.concat_tables(pending)
        if writer is None:
            writer = pq.ParquetWriter(handle, table.schema, compression=PARQUET_COMPRESSION)
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        pending, buffered = [], 0

    with storage.open(target, mode="wb") as handle:
        for name in names:
            with storage.open(name) as part:
                table = pq.read_table(part)
            pending.append(table)
            buffered += table.num_rows
            rows += table.num_rows
            if buffered >= ROW_GROUP_ROWS:
                flush()
        if pending:
            flush()
        if writer is not None:
            writer.close()
    return rows


def _roll_forward(layout: OutputLayout, journal: dict[str, Any]) -> None:
    """Put every merged part in place and delete the parts it replaces; idempotent.

    Every move is durable before the first delete: a power loss never leaves a group's rows
    in neither its new part nor its old ones."""
    storage = layout.storage
    for first in journal["replaces"]:
        staged = f"{COMPACT_DIR}/{first}"
        if storage.exists(staged):
            if storage.remote:
                storage.fs.copy(storage.path(staged), storage.path(first))  # a server-side copy: atomic
                storage.fs.rm(storage.path(staged))
            else:
                storage.fs.mv(storage.path(staged), storage.path(first))  # a rename: atomic
    storage.sync_folder()
    _fault(MOVED)
    for group in journal["replaces"].values():
        for name in group[1:]:
            storage.remove(name)
            _fault(DELETING)
    storage.sync_folder()
    _fault(ROLLED)
    journal = {**journal, "done": True, "finished_at": time.time()}
    storage.write_atomic(json.dumps(journal).encode(), JOURNAL_FILE)


@contextmanager
def _locked(storage: Storage, output: str) -> Iterator[None]:
    """Hold ``compact.lock`` for the body; OutputError while another live ``compact`` holds it."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time()}
    record = json.dumps(me).encode()
    for _ in range(LOCK_TRIES):
        if storage.create_once(record, LOCK_FILE):
            break
        held = _read_lock(storage)
        if held is None:
            continue  # released meanwhile
        breaker = f"{LOCK_FILE}.broken-{held['pid']}-{held['started_at']}"  # one caller breaks each dead lock
        if not _stale(held) or not storage.create_once(record, breaker):
            raise OutputError(
                f"another compact of {output} is running (pid {held.get('pid')} on {held.get('host')}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(held.get('started_at', 0))))}); "
                f"wait for it to finish. If it is not running any more, delete {storage.url(LOCK_FILE)} "
                "and run compact again")
        storage.remove(LOCK_FILE)
    else:
        raise OutputError(f"cannot take {storage.url(LOCK_FILE)}: other compacts of {output} keep taking it")
    try:
        yield
    finally:
        storage.remove(LOCK_FILE)


def _read_lock(storage: Storage) -> dict[str, Any] | None:
    try:
        held: dict[str, Any] = json.loads(storage.read_bytes(LOCK_FILE))
    except FileNotFoundError:
        return None
    except ValueError:  # not ours to judge: treat it as held
        return {"pid": "?", "host": "?", "started_at": 0}
    return held


def _stale(held: dict[str, Any]) -> bool:
    """The lock of a compact on this machine whose process is gone (killed, crashed)."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def _fault(point: str) -> None:
    """Test fault points (inert unless ``BATCHFORMERS_TEST_FAULTS`` names one): ``compact-kill=POINT``
    kills this process with SIGKILL there, ``compact-sleep=POINT`` sleeps there (a compact holding its lock)."""
    spec = os.environ.get(FAULTS_ENV)
    if not spec:
        return
    faults = [item.strip().partition("=") for item in spec.split(",")]
    if ("compact-kill", "=", point) in faults:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if ("compact-sleep", "=", point) in faults:
        time.sleep(FAULT_SLEEP)


def _journal(layout: OutputLayout) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads(layout.storage.read_bytes(JOURNAL_FILE))
    except FileNotFoundError:
        return None
    if "parts" not in loaded:
        raise OutputError(f"{layout.storage.url(JOURNAL_FILE)} is not a compaction journal")
    return loaded
