"""Turn a spec into a manifest: discover inputs, check them, plan shards as row ranges.

Only file metadata is read: sizes, times and Parquet footers (row counts and schemas),
``jobs.io.sources.PLAN_READERS`` files at a time, so that planning 10,000 files on object
storage takes seconds rather than the sum of 40,000 round trips. Progress goes to
``progress(done, total)``, by default a line on standard error when it is a terminal
and the input has more than ``PROGRESS_FROM`` files.
"""

from __future__ import annotations

import hashlib
import sys
import time
from importlib import metadata
from typing import TextIO

from jobs.errors import InputError, SpecError
from jobs.io.sources import Progress, SourceFile, discover, fingerprint, schema_of
from jobs.manifest import Manifest, ShardPlan
from jobs.shard import output_schema
from jobs.spec import JobSpec

VERSIONED_PACKAGES = ("batchformers", "transformers", "torch", "tokenizers", "pyarrow", "celery")
PROGRESS_FROM = 100  # input files from which the default progress line is shown
PROGRESS_INTERVAL = 0.5


def plan_shards(sources: list[SourceFile], shard_rows: int) -> list[ShardPlan]:
    """Row ranges of at most ``shard_rows``, never crossing a file, in input order."""
    shards: list[ShardPlan] = []
    for source_index, source in enumerate(sources):
        for start in range(0, source.num_rows, shard_rows):
            stop = min(start + shard_rows, source.num_rows)
            shards.append(ShardPlan(index=len(shards), source=source_index, start=start, stop=stop))
    return shards


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
    try:
        sources = discover(spec.input, spec.input_format, spec.dataset, progress or terminal_progress())
    except InputError as exc:
        raise SpecError("input", f"{exc}; check the path (Parquet, Arrow IPC or a datasets directory)") from None
    kept_schema = _check_columns(spec, sources)
    if sum(source.num_rows for source in sources) == 0:
        raise SpecError("input", f"{spec.input} has no rows; there is nothing to do")
    shards = plan_shards(sources, spec.shard_rows)
    input_fingerprint = fingerprint(sources)
    schema = output_schema(spec.task_type(), kept_schema)
    job_hash = hashlib.sha256(f"{spec.fingerprint()}:{input_fingerprint}".encode()).hexdigest()[:10]
    return Manifest(
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


def _check_columns(spec: JobSpec, sources: list[SourceFile]):  # type: ignore[no-untyped-def]
    """Every file must have every column the job reads; returns the kept columns' schema."""
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
    kept = spec.kept_columns()
    return first_schema.empty_table().select(kept).schema


def library_versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
