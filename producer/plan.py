"""Turn a spec into a manifest: discover inputs, check them, plan shards as row ranges.

Only file metadata is read: sizes, times and footers (row counts, schemas, row groups; an
Arrow file's record batch headers), ``jobs.io.sources.PLAN_READERS`` files at a time, so that
planning 10,000 files on object storage takes seconds rather than the sum of 40,000 round
trips. Progress goes to ``progress(done, total)``, by default a line on standard error when it
is a terminal and the input has more than ``PROGRESS_FROM`` files.

**Shards and read units.** A range read decodes whole *read units* (a Parquet row group, an
Arrow record batch), so a shard reads every unit it overlaps. Shards are cut every
``shard_rows`` rows of a file; a cut that would make its shard decode more than
``SNAP_FACTOR`` times its rows moves to the nearest unit boundary within ``SNAP_TOLERANCE`` of
``shard_rows`` that brings the shard within that factor (ties: the later boundary). Cuts that
already read well stay where they are, so a file whose units are small or aligned with
``shard_rows`` is planned as it always was; a unit far larger than ``shard_rows`` has no
boundary near a cut, and every shard inside it decodes it whole. The plan is a function of the
row counts alone, the same on every submit of the same input, and shards never cross files.
:func:`read_warnings` says at submit when a file's shards still decode more than
``WARN_FACTOR`` times their rows (and at least ``WARN_EXTRA_BYTES`` more than the file): units
far larger than ``shard_rows``, or an Arrow stream on object storage, which has no footer to
seek by and is read from its start by every shard.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import TextIO

import pyarrow as pa

from jobs.errors import InputError, SpecError
from jobs.io.readers import reader_for
from jobs.io.sources import Progress, SourceFile, discover, fingerprint, forget_layouts, read_units, schema_of
from jobs.io.storage import is_remote
from jobs.manifest import Manifest, ShardPlan
from jobs.shard import output_schema
from jobs.spec import JobSpec

VERSIONED_PACKAGES = ("batchformers", "transformers", "torch", "tokenizers", "pyarrow", "celery")
PROGRESS_FROM = 100  # input files from which the default progress line is shown
PROGRESS_INTERVAL = 0.5
SNAP_FACTOR = 2.0  # a cut whose shard decodes more than this times its rows moves to a unit boundary ...
SNAP_TOLERANCE = 0.25  # ... within this fraction of shard_rows, when that brings it within SNAP_FACTOR
WARN_FACTOR = 2.0  # submit warns when a file's shards decode more than this times their rows ...
WARN_EXTRA_BYTES = 1 << 20  # ... and that is at least this many bytes more than the file
WARNED_FILES = 3  # files named in one warning; the rest are counted

Units = tuple[int, ...] | None


def plan_shards(sources: list[SourceFile], shard_rows: int,
                units: Sequence[Units] | None = None) -> list[ShardPlan]:
    """Row ranges of about ``shard_rows``, never crossing a file, in input order; with each file's
    read ``units`` (rows of each row group or record batch), a cut that would read badly moves to a
    near boundary (the module's docstring has the rule). Without units every cut is at ``shard_rows``."""
    shards: list[ShardPlan] = []
    for source_index, source in enumerate(sources):
        bounds = _bounds(units[source_index] if units is not None else None, source.num_rows)
        for start, stop in _cuts(source.num_rows, shard_rows, bounds):
            shards.append(ShardPlan(index=len(shards), source=source_index, start=start, stop=stop))
    return shards


def _bounds(units: Units, rows: int) -> list[int] | None:
    """Row offsets where a read unit starts, and the file's end; None without usable units."""
    if units is None or sum(units) != rows:
        return None
    return list(itertools.accumulate(units, initial=0))


def _cuts(rows: int, shard_rows: int, bounds: list[int] | None) -> list[tuple[int, int]]:
    cuts = []
    start = 0
    reach = int(SNAP_TOLERANCE * shard_rows)
    while start < rows:
        stop = min(start + shard_rows, rows)
        if bounds is not None and stop < rows and _decoded(bounds, start, stop) > SNAP_FACTOR * (stop - start):
            stop = _snapped(bounds, start, stop, reach)
        cuts.append((start, stop))
        start = stop
    return cuts


def _snapped(bounds: list[int], start: int, stop: int, reach: int) -> int:
    """The boundary nearest ``stop`` within ``reach`` rows (the later of two as near) that keeps
    ``[start, boundary)`` within the snap factor; ``stop`` when there is none."""
    near = bounds[bisect.bisect_left(bounds, max(start + 1, stop - reach)):bisect.bisect_right(bounds, stop + reach)]
    good = [bound for bound in near if _decoded(bounds, start, bound) <= SNAP_FACTOR * (bound - start)]
    return min(good, key=lambda bound: (abs(bound - stop), -bound), default=stop)


def _decoded(bounds: list[int], start: int, stop: int) -> int:
    """Rows of the units that rows ``[start, stop)`` overlap: what reading them decodes."""
    first = bounds[bisect.bisect_right(bounds, start) - 1]
    last = bounds[bisect.bisect_left(bounds, stop)]
    return last - first


def read_factor(source: SourceFile, units: Units, shards: Sequence[ShardPlan]) -> float:
    """How many times its rows the shards of ``source`` (``shards``, all of one file) read in all.

    A file with units decodes the units each shard overlaps; a stream (no units) is walked from
    its start to each shard's end (on a local disk memory-mapped, so that costs almost nothing:
    1.0 there)."""
    rows = sum(plan.rows for plan in shards)
    if not rows:
        return 1.0
    if units is None:
        return sum(plan.stop for plan in shards) / rows if is_remote(source.url) else 1.0
    bounds = _bounds(units, source.num_rows)
    if bounds is None:
        return 1.0
    return sum(_decoded(bounds, plan.start, plan.stop) for plan in shards) / rows


def read_warnings(manifest: Manifest, units: Sequence[Units] | None = None) -> list[str]:
    """What submit says about inputs whose layout makes shards read much more than their rows."""
    per_source: dict[int, list[ShardPlan]] = {}
    for plan in manifest.shards:
        per_source.setdefault(plan.source, []).append(plan)
    shard_rows = int(manifest.spec.get("shard_rows") or max(plan.rows for plan in manifest.shards))
    found: list[tuple[float, str]] = []
    for index, shards in per_source.items():
        source = manifest.sources[index]
        file_units = units[index] if units is not None else read_units(source)
        factor = read_factor(source, file_units, shards)
        if factor > WARN_FACTOR and (factor - 1) * source.size >= WARN_EXTRA_BYTES:
            found.append((factor, _why(source, file_units, shard_rows, factor)))
    found.sort(key=lambda item: -item[0])
    lines = [why for _, why in found[:WARNED_FILES]]
    if len(found) > WARNED_FILES:
        lines.append(f"{len(found) - WARNED_FILES} more input files read {WARN_FACTOR:g}x their share or more")
    return lines


def _why(source: SourceFile, units: Units, shard_rows: int, factor: float) -> str:
    reader = reader_for(source.format)
    if units is None:
        return (f"read amplification {factor:.1f}x: {source.url} is an Arrow stream (no footer to seek by), so "
                f"each shard reads it from the start up to its rows; write it as an Arrow file "
                f"(pyarrow.feather.write_feather) or Parquet to read only each shard's rows")
    largest = max(units)
    return (f"read amplification {factor:.1f}x: {source.url} has {reader.unit}s of up to {largest:,} rows and "
            f"every shard decodes whole {reader.unit}s, for shard_rows {shard_rows:,}; rewrite it with "
            f"{reader.unit}s of at most {shard_rows:,} rows ({reader.rewrite_hint.replace('N', str(shard_rows))}) "
            "or raise shard_rows")


def terminal_progress(stream: TextIO | None = None) -> Progress:
    """``progress(done, total)`` that redraws one line on a terminal, at most twice a second."""
    out = stream or sys.stderr
    last = 0.0

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if total < PROGRESS_FROM or not getattr(out, "isatty", lambda: False)():
            return
        if now - last >= PROGRESS_INTERVAL or done == total:
            last = now
            end = "\n" if done == total else ""
            print(f"\rplanning: {done:,} of {total:,} input files read", end=end, file=out, flush=True)

    return report


def build_manifest(spec: JobSpec, progress: Progress | None = None) -> Manifest:
    """Everything a worker needs, from file metadata only; SpecError names what is wrong."""
    return plan_job(spec, progress)[0]


def plan_job(spec: JobSpec, progress: Progress | None = None) -> tuple[Manifest, list[Units]]:
    """The manifest and each input file's read units (for :func:`read_warnings`)."""
    try:
        sources = discover(spec.input, spec.input_format, spec.dataset, progress or terminal_progress())
    except InputError as exc:
        raise SpecError("input", f"{exc}; check the path (Parquet, Arrow IPC or a datasets directory)") from None
    try:
        kept_schema = _check_columns(spec, sources)
        units = [read_units(source) for source in sources]
    finally:
        forget_layouts(sources)
    if sum(source.num_rows for source in sources) == 0:
        raise SpecError("input", f"{spec.input} has no rows; there is nothing to do")
    shards = plan_shards(sources, spec.shard_rows, units)
    input_fingerprint = fingerprint(sources)
    schema = output_schema(spec.task_type(), kept_schema)
    job_hash = hashlib.sha256(f"{spec.fingerprint()}:{input_fingerprint}".encode()).hexdigest()[:10]
    manifest = Manifest(
        job_id=f"{spec.task}-{job_hash}",
        spec=spec.model_dump(mode="json"),
        spec_fingerprint=spec.fingerprint(),
        input_fingerprint=input_fingerprint,
        sources=sources,
        shards=shards,
        output_schema=[{"name": f.name, "type": str(f.type)} for f in schema],
        versions=library_versions(),
        created_at=time.time(),
    )
    return manifest, units


def _check_columns(spec: JobSpec, sources: list[SourceFile]) -> pa.Schema:
    """Every file must have every column the job reads; returns the kept columns' schema (built from
    its fields: an empty table would import pandas, half a second of submit)."""
    needed = {**{f"columns.{role}": col for role, col in spec.input_columns().items()},
              **{"columns.id" if col == spec.id_column() else "passthrough": col for col in spec.kept_columns()}}
    first_schema = None
    for source in sources:
        schema = schema_of(source)
        first_schema = first_schema or schema
        for field, column in needed.items():
            if column not in schema.names:
                where = source.url if len(sources) > 1 else spec.input
                raise SpecError(
                    field,
                    f"column {column!r} is not in {where}; its columns are: {', '.join(schema.names)}",
                )
    assert first_schema is not None
    return pa.schema([first_schema.field(column) for column in spec.kept_columns()])


def library_versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
