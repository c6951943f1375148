"""Run one shard: read its rows, run the task, build the output table. No Celery here."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.engine.base import ProgressCallback, Runner, TaskType
from jobs.io.sources import read_rows
from jobs.manifest import Manifest, ShardPlan

ROW_INDEX = "row_index"
ERROR = "error"
TRUNCATED = "truncated"


def output_schema(task: TaskType, kept: pa.Schema) -> pa.Schema:
    """Kept input columns, ``row_index``, the task's columns, then ``error``."""
    fields = list(kept) + [pa.field(ROW_INDEX, pa.int64())]
    fields += list(task.output_schema()) + [pa.field(ERROR, pa.string())]
    return pa.schema(fields)


def first_row(manifest: Manifest, plan: ShardPlan) -> int:
    """Global index of the shard's first row across all input files."""
    return sum(source.num_rows for source in manifest.sources[: plan.source]) + plan.start


def run_shard(
    manifest: Manifest,
    plan: ShardPlan,
    task: TaskType,
    runner: Runner,
    progress: ProgressCallback | None = None,
    overlap: bool = True,
) -> tuple[pa.Table, dict[str, Any]]:
    """The shard's output table and a summary (rows, errors, seconds)."""
    started = time.monotonic()
    spec = manifest.job_spec()
    roles = spec.input_columns()
    kept = spec.kept_columns()
    wanted = list(dict.fromkeys(kept + list(roles.values())))
    table = read_rows(manifest.sources[plan.source], plan.start, plan.stop, wanted)
    inputs = {role: table.column(column).to_pylist() for role, column in roles.items()}
    base = first_row(manifest, plan)
    if getattr(runner, "wants_row_index", False):  # per-row seeds that do not depend on the sharding
        inputs[ROW_INDEX] = list(range(base, base + table.num_rows))
    produced = runner.run_table(inputs, progress, spec.run_options(overlap))
    kept_table = table.select(kept)
    schema = output_schema(task, kept_table.schema)
    columns = list(kept_table.columns) + [pa.array(np.arange(base, base + table.num_rows, dtype=np.int64))]
    columns += [produced.column(name) for name in schema.names[len(kept) + 1 :]]
    output = pa.Table.from_arrays(columns, schema=schema)
    errors = table.num_rows - output.column(ERROR).null_count
    summary = {"rows": table.num_rows, "errors": errors, "seconds": round(time.monotonic() - started, 3)}
    stats = getattr(runner, "last_stats", None)
    if stats is not None and stats.batches:
        summary.update(batches=stats.batches, tokens=stats.tokens, padded_tokens=stats.padded_tokens)
    if TRUNCATED in output.schema.names:  # issue 12: rows cut to the model's length, counted for status
        summary[TRUNCATED] = truncated_rows(output)
    return output, summary


def truncated_rows(output: pa.Table) -> int:
    """Rows whose ``truncated`` column is true (0 when the task has no such column)."""
    if TRUNCATED not in output.schema.names:
        return 0
    return int(sum(1 for value in output.column(TRUNCATED).to_pylist() if value))
