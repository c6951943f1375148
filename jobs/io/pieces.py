"""A shard's pieces on storage: claims that make each piece's commit exactly-once under a takeover.

A long shard commits its finished rows in pieces (:mod:`jobs.pieces` runs them). A piece is rows
``[start, stop)`` of the shard (counted from the shard's first row) and is committed in two steps:

1. its claim, ``_batchformers/pieces/<shard>/<start>.json`` (stop, rows, errors), is created once:
   O_EXCL locally, a conditional put on S3 (:meth:`jobs.io.storage.Storage.create_once`). Of two
   holders racing for the same start (one paused past its lease and the one that took over),
   exactly one wins; the other drops its rows and follows the winner's claim;
2. its part, ``part-<shard>.parquet`` for start 0 and ``part-<shard>.r<start>.parquet`` after
   it (names that sort in row order, between the shard's and the next one's), is published
   atomically. A claim whose part is missing (its writer died in between) is redone, for exactly
   its rows, by the next holder; a paused writer that publishes it later writes the same rows.

A claim is only ever made at row 0 or at the stop of a claim its writer read, and a start has one
claim: the claims form one chain from row 0 without overlaps, so every row is in exactly one part,
whatever piece sizes the workers chose. Readers and ``compact`` see pieces as ordinary parts; the
shard counts as committed only when its commit marker is written, after the chain reaches its last
row with every part published (the marker lists the parts).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from jobs.io.layout import META_DIR, CommitFault, OutputLayout, part_name

if TYPE_CHECKING:
    import pyarrow as pa

PIECES_DIR = f"{META_DIR}/pieces"


def piece_part_name(shard: int, start: int) -> str:
    """The part of the piece starting at row ``start`` of ``shard``: the shard's own name for its first."""
    return part_name(shard) if start == 0 else f"part-{shard:05d}.r{start:09d}.parquet"


class ShardPieces:
    """The claims and parts of one shard's pieces."""

    def __init__(self, layout: OutputLayout, shard: int) -> None:
        self.layout = layout
        self.shard = shard
        self.folder = f"{PIECES_DIR}/{shard:05d}"

    def claims(self) -> dict[int, dict[str, Any]]:
        """Every claim of the shard, by start row (read afresh)."""
        storage = self.layout.storage
        found: dict[int, dict[str, Any]] = {}
        for name in storage.list(self.folder):
            if name.endswith(".json") and name.split(".")[0].isdigit():
                try:
                    found[int(name.split(".")[0])] = json.loads(storage.read_bytes(self.folder, name))
                except FileNotFoundError:  # removed since the listing: the shard is being retried afresh
                    continue
        return found

    def claim(self, record: dict[str, Any]) -> bool:
        """Claim rows ``[record["start"], record["stop"])``; True for the one caller that created the claim."""
        name = f"{int(record['start']):09d}.json"
        return self.layout.storage.create_once(json.dumps(record).encode(), self.folder, name)

    def published(self, start: int) -> bool:
        return self.layout.storage.exists(piece_part_name(self.shard, start))

    def publish(self, start: int, table: pa.Table, fault: CommitFault | None = None) -> str:
        """Publish the part of the claimed piece at ``start``; its name."""
        name = piece_part_name(self.shard, start)
        self.layout.publish_part(self.shard, table, name, fault)
        return name


def chain(claims: dict[int, dict[str, Any]], rows: int) -> list[dict[str, Any]]:
    """The claims from row 0 on, each starting where the one before stopped, as far as they go."""
    found: list[dict[str, Any]] = []
    start = 0
    while start < rows and start in claims:
        found.append(claims[start])
        start = int(claims[start]["stop"])
    return found
