"""``batchformers compact OUTPUT``: merge a finished job's many small parts into a few large ones.

A job of many small shards leaves many small Parquet files, and every reader pays per
file (an open, a footer, a request on object storage). Compaction rewrites runs of
consecutive parts into parts of about ``target_bytes`` each, in shard order, so rows
stay in ``row_index`` order; each new part takes the name of the first part it
replaces (``part-00000.parquet`` then holds shards 0 to k), so names still sort in
row order and ``inspect`` still finds the first rows.

All or nothing, in three steps:

1. the new parts are written under ``_batchformers/compact/`` (hidden from readers);
2. ``_batchformers/compaction.json`` is written in one put: the commit point. Until it
   exists the output is untouched, and an interrupted run leaves only hidden files;
3. each new part is moved over the first part it replaces and the rest are deleted,
   then the journal is marked done. A run interrupted here is finished by running
   ``compact`` again, which reads the journal and rolls forward.

Readers that list the directory during step 3 (seconds) may see a group's rows both
in its new part and in a part not yet deleted: compact while nobody reads the output.
The commit markers are kept (they are what makes a resubmit skip the shards); the
journal says which part now holds each shard.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.errors import OutputError
from jobs.io.layout import META_DIR, PARQUET_COMPRESSION, OutputLayout, part_name

COMPACT_DIR = f"{META_DIR}/compact"
JOURNAL_FILE = f"{META_DIR}/compaction.json"
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
    """Compact the finished job at ``output``; OutputError when it is not finished."""
    started = time.perf_counter()
    layout = OutputLayout(output)
    storage = layout.storage
    manifest = layout.read_manifest()
    journal = _journal(layout)
    if journal is None or journal.get("done"):
        if not layout.is_complete():
            raise OutputError(f"{output} is not complete (no _batchformers/_SUCCESS); compact a finished job")
        shards = len(manifest.shards)
        current = journal["parts"] if journal else {part_name(i): [i] for i in range(shards)}
        sizes = {name: int(storage.fs.size(storage.path(name))) for name in current}
        # Parts already merged count with their size; group whole existing parts, in order.
        names = sorted(current, key=lambda name: current[name][0])
        groups = [[names[i] for i in group] for group in plan_groups([sizes[n] for n in names], target_bytes)]
        if all(len(group) == 1 for group in groups):
            return Compaction(output, len(names), len(names), manifest.total_rows, time.perf_counter() - started)
        storage.makedirs(COMPACT_DIR)
        new_parts: dict[str, list[int]] = {}
        for number, group in enumerate(groups):
            shards_in = [shard for name in group for shard in current[name]]
            if len(group) > 1:
                _merge(layout, group, f"{COMPACT_DIR}/{group[0]}")
                if log:
                    log(f"compact: group {number + 1} of {len(groups)}: {len(group)} parts -> {group[0]}")
            new_parts[group[0]] = shards_in
        journal = {"job_id": manifest.job_id, "parts": new_parts, "replaces": {g[0]: g for g in groups if len(g) > 1},
                   "parts_before": len(names), "created_at": time.time(), "done": False}
        storage.write_atomic(json.dumps(journal).encode(), JOURNAL_FILE)  # the commit point
    _roll_forward(layout, journal)
    return Compaction(output, int(journal["parts_before"]), len(journal["parts"]), manifest.total_rows,
                      time.perf_counter() - started)


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
    """Put every merged part in place and delete the parts it replaces; idempotent."""
    storage = layout.storage
    for first, group in journal["replaces"].items():
        staged = f"{COMPACT_DIR}/{first}"
        if storage.exists(staged):
            if storage.remote:
                storage.fs.copy(storage.path(staged), storage.path(first))  # a server-side copy: atomic
                storage.fs.rm(storage.path(staged))
            else:
                storage.fs.mv(storage.path(staged), storage.path(first))  # a rename: atomic
        for name in group[1:]:
            storage.remove(name)
    journal = {**journal, "done": True, "finished_at": time.time()}
    storage.write_atomic(json.dumps(journal).encode(), JOURNAL_FILE)


def _journal(layout: OutputLayout) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads(layout.storage.read_bytes(JOURNAL_FILE))
    except FileNotFoundError:
        return None
    if "parts" not in loaded:
        raise OutputError(f"{layout.storage.url(JOURNAL_FILE)} is not a compaction journal")
    return loaded
