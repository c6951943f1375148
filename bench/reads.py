"""Bytes a shard reads from object storage, against its share of the file (``python -m bench.reads``).

A 1M-row input (an ``id`` and a ``text`` column) in one file on a local moto S3 server, as an
Arrow IPC file and as Parquet, each in two layouts: read units (record batches, row groups) of
8,192 rows, and what the writers give by default (feather: 65,536-row batches; pyarrow Parquet:
one row group of every row). The job is planned as submit plans it (``shard_rows`` 10,000), and
a few of its shards are read as a worker reads them (``jobs.io.sources.read_rows``); the bytes
are the bodies of the GET requests s3fs sent (counted from botocore's ``after-call`` event, so
read-ahead and footers count). Each sampled shard is read twice: *cold*, as the first shard of the
file a worker process runs (it reads the file's index, a Parquet footer or an Arrow file's batch
headers, then the rows), and *warm*, as every later one (the index remembered). ``before`` reads the
same shards the naive way, for comparison: the whole IPC file (``read_all``), and Parquet through fsspec's default read-ahead.

Target: at most 2x the shard's share where the layout allows it (units no larger
than ``shard_rows``); where it does not, submit warns with the factor.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

ROWS = 1_000_000
QUICK_ROWS = 200_000
SHARD_ROWS = 10_000
SMALL_UNITS = 8_192
SAMPLED_SHARDS = 4  # shards read per layout: first, two in the middle, last
TARGET_FACTOR = 2.0


def _table(rows: int) -> pa.Table:
    words = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
    texts = [f"row {i} {words[i % 8]} {words[(i * 7) % 8]} {i * 2654435761 % 1000003}" for i in range(rows)]
    return pa.table({"id": pa.array(range(rows), pa.int64()), "text": texts})


def _layouts(table: pa.Table) -> dict[str, tuple[str, bytes]]:
    """name -> (file suffix, bytes)."""
    out: dict[str, tuple[str, bytes]] = {}
    for name, chunk in (("arrow file, 8,192-row batches", SMALL_UNITS), ("arrow file, feather default batches", None)):
        sink = io.BytesIO()
        if chunk is None:
            feather.write_feather(table, sink, compression="uncompressed")
        else:
            feather.write_feather(table, sink, compression="uncompressed", chunksize=chunk)
        out[name] = (".arrow", sink.getvalue())
    for name, group in (("parquet, 8,192-row groups", SMALL_UNITS), ("parquet, one row group", None)):
        sink = io.BytesIO()
        pq.write_table(table, sink, row_group_size=group or table.num_rows)
        out[name] = (".parquet", sink.getvalue())
    return out


class GetCounter:
    """Bytes and requests of every GetObject an s3fs filesystem makes while counting."""

    def __init__(self, fs: Any) -> None:
        fs.connect()
        self.events = fs.s3.meta.events
        self.bytes = 0
        self.requests = 0
        self.events.register("after-call.s3.GetObject", self._count)

    def _count(self, parsed: dict[str, Any] | None = None, **_: Any) -> None:
        self.bytes += int((parsed or {}).get("ContentLength") or 0)
        self.requests += 1

    @contextmanager
    def measure(self) -> Iterator[dict[str, int]]:
        before_bytes, before_requests = self.bytes, self.requests
        result: dict[str, int] = {}
        yield result
        result.update(bytes=self.bytes - before_bytes, requests=self.requests - before_requests)

    def close(self) -> None:
        self.events.unregister("after-call.s3.GetObject", self._count)


def _old_read(storage: Any, path: str, fmt: str, start: int, stop: int, columns: list[str]) -> None:
    """The naive reads (whole IPC file, fsspec's default read-ahead), for the ``before`` column."""
    with storage.fs.open(path, "rb") as handle:
        if fmt == "parquet":
            parquet = pq.ParquetFile(handle)
            groups, offset = [], 0
            for index in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(index).num_rows
                if offset < stop and offset + rows > start:
                    groups.append(index)
                offset += rows
            parquet.read_row_groups(groups, columns=columns)
        else:
            ipc.open_file(handle).read_all()


def _sampled(shards: list[Any]) -> list[Any]:
    picks = {0, len(shards) // 3, 2 * len(shards) // 3, len(shards) - 1}
    return [shards[i] for i in sorted(picks)][:SAMPLED_SHARDS]


def measure_reads(rows: int = ROWS, shard_rows: int = SHARD_ROWS, before: bool = True) -> dict[str, Any]:
    """Plan each layout's job and read a few of its shards from moto S3; bytes per shard vs share."""
    from bench.scale import MotoS3
    from jobs.io.sources import forget_indexes, forget_layouts, probe, read_rows, read_units
    from jobs.io.storage import Storage
    from producer.plan import plan_shards, read_factor

    table = _table(rows)
    results: list[dict[str, Any]] = []
    with MotoS3() as s3:
        bucket = s3.bucket()
        for name, (suffix, data) in _layouts(table).items():
            url = f"s3://{bucket}/reads/{len(results)}{suffix}"
            storage = Storage.at(url)
            storage.fs.pipe_file(storage.root, data)
            counter = GetCounter(storage.fs)
            try:
                with counter.measure() as planned:
                    source = probe(storage, storage.root)
                units = read_units(source)
                forget_layouts([source])
                shards = plan_shards([source], shard_rows, [units])
                cold, warm, old_factors, requests, seconds = [], [], [], [], []
                for shard in _sampled(shards):
                    share = source.size * shard.rows / source.num_rows
                    forget_indexes()  # the first shard of this file in a worker process
                    with counter.measure() as read:
                        got = read_rows(source, shard.start, shard.stop, ["id", "text"])
                    assert got.column("id").to_pylist() == list(range(shard.start, shard.stop))
                    cold.append(read["bytes"] / share)
                    started = time.perf_counter()
                    with counter.measure() as read:
                        got = read_rows(source, shard.start, shard.stop, ["id", "text"])
                    seconds.append(time.perf_counter() - started)
                    assert got.column("id").to_pylist() == list(range(shard.start, shard.stop))
                    warm.append(read["bytes"] / share)
                    requests.append(read["requests"])
                    if before:
                        with counter.measure() as old:
                            _old_read(storage, storage.root, source.format, shard.start, shard.stop, ["id", "text"])
                        old_factors.append(old["bytes"] / share)
            finally:
                counter.close()
            results.append({
                "layout": name, "format": source.format, "file_mb": source.size / 1e6,
                "units": len(units or ()), "shards": len(shards), "shard_rows": shard_rows,
                "plan_bytes": planned["bytes"], "plan_requests": planned["requests"],
                "mean_factor": sum(warm) / len(warm), "max_factor": max(warm),
                "cold_mean_factor": sum(cold) / len(cold), "cold_max_factor": max(cold),
                "planned_factor": read_factor(source, units, shards),
                "before_factor": (sum(old_factors) / len(old_factors)) if old_factors else None,
                "requests_per_shard": max(requests), "seconds_per_shard": sum(seconds) / len(seconds),
            })
    return {"rows": rows, "shard_rows": shard_rows, "target_factor": TARGET_FACTOR, "layouts": results}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"{results['rows']:,} rows in one file on moto S3, shard_rows {results['shard_rows']:,}; bytes a shard "
             "reads / its share of the file (sampled shards)", "",
             "| layout | file MB | units | shards | plan bytes (requests) | first shard (cold): mean / max | "
             "later shards: mean / max | planned | before | GETs per later shard | s per later shard |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["layouts"]:
        before = f"{r['before_factor']:.1f}x" if r["before_factor"] is not None else "-"
        lines.append(f"| {r['layout']} | {r['file_mb']:.1f} | {r['units']:,} | {r['shards']} | "
                     f"{r['plan_bytes']:,} ({r['plan_requests']}) | {r['cold_mean_factor']:.2f}x / {r['cold_max_factor']:.2f}x | "
                     f"{r['mean_factor']:.2f}x / {r['max_factor']:.2f}x | "
                     f"{r['planned_factor']:.2f}x | {before} | {r['requests_per_shard']} | "
                     f"{r['seconds_per_shard']:.2f} |")
    return "\n".join(lines)


def figures(workdir: Path, quick: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """``bench --startup``'s hook: the worst shard's bytes / share per layout, cold and warm."""
    rows = QUICK_ROWS if quick else ROWS
    log(f"bench.reads: {rows:,} rows per layout on moto S3")
    found = []
    for r in measure_reads(rows, SHARD_ROWS, before=False)["layouts"]:
        small = r["units"] * SHARD_ROWS >= rows  # units no larger than shard_rows: the 2x target applies
        for key, when in (("cold_max_factor", "first shard in a worker"), ("max_factor", "later shards")):
            found.append({"name": f"bytes read / share, {r['layout']}, {when} (max)", "value": round(r[key], 2),
                          "unit": "x", "target": TARGET_FACTOR if small else None,
                          "note": f"{rows:,} rows, shard_rows {SHARD_ROWS:,}" + ("" if small else "; submit warns")})
    return found


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS)
    parser.add_argument("--no-before", action="store_true", help="skip reading the shards the old way")
    args = parser.parse_args(argv)
    print(markdown(measure_reads(args.rows, args.shard_rows, before=not args.no_before)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
