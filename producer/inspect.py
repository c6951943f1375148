"""``batchformers inspect OUTPUT``: what a job's output holds, for the person about to read it.

The schema comes from the Parquet parts themselves (checked against the
manifest), the counts from the commit markers, and the first rows from the first
part; nothing reads more than that.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.parquet as pq

from jobs.io.completion import outcome
from jobs.io.layout import OutputLayout, part_name
from jobs.pinning import pin_of

CELL_WIDTH = 200  # the console cuts a value at its width anyway


@dataclass(frozen=True)
class OutputDescription:
    output: str
    job_id: str
    task: str
    model: str
    revision: str | None
    state: str  # complete | failed | incomplete: what `status` and `jobs` say of a finished job
    shards: int
    parts: int
    rows: int
    rows_expected: int
    row_errors: int
    failed_shards: int
    schema: list[dict[str, str]]
    schema_matches_manifest: bool
    versions: dict[str, str]
    created_at: float
    completed_at: float | None
    shard_seconds: float
    head: list[dict[str, Any]] = field(default_factory=list)
    truncated: int = 0  # rows cut to the model's length (tasks with a `truncated` column)
    max_error_rate: float = 1.0
    model_pin: dict[str, Any] | None = None  # what the model resolved to at submit (jobs.pinning)
    pinned: str = ""  # the pin in one line
    reason: str = ""  # why the job failed, when it did

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def inspect_output(output: str, rows: int = 5) -> OutputDescription:
    """Describe the job output at ``output``; OutputError when it holds no batchformers job."""
    layout = OutputLayout(output)
    manifest = layout.read_manifest()
    pin = pin_of(manifest)
    committed_names, failed_names = layout.marker_numbers()  # one listing; the markers read in parallel
    committed = layout.read_committed(sorted(committed_names))
    failure = layout.job_failure()
    completion = layout.completion() or failure
    schema = manifest.output_schema
    head: list[dict[str, Any]] = []
    if committed:
        first = min(committed)
        with layout.storage.open(part_name(first)) as handle:
            parquet = pq.ParquetFile(handle)
            schema = [{"name": f.name, "type": str(f.type)} for f in parquet.schema_arrow]
            if rows > 0:
                batch = next(parquet.iter_batches(batch_size=rows), None)
                head = batch.to_pylist() if batch is not None else []
    row_errors = sum(m["errors"] for m in committed.values())
    failed_shards = len(failed_names - set(committed))
    state, reason = _state(failure, len(manifest.shards), len(committed), failed_shards,
                           sum(m["rows"] for m in committed.values()), row_errors,
                           float(manifest.spec_value("max_error_rate")))
    return OutputDescription(
        output=output,
        job_id=manifest.job_id,
        task=str(manifest.spec_value("task")),
        model=str(manifest.spec_value("model") or manifest.job_spec().resolved_model()),  # a task's default model
        revision=manifest.spec_value("revision"),
        state=state,
        shards=len(manifest.shards),
        parts=len(committed),
        rows=sum(m["rows"] for m in committed.values()),
        rows_expected=manifest.total_rows,
        row_errors=row_errors,
        failed_shards=failed_shards,
        schema=schema,
        schema_matches_manifest=_normalised(schema) == _normalised(manifest.output_schema),
        versions=manifest.versions,
        created_at=manifest.created_at,
        completed_at=completion.get("completed_at") if completion else None,
        shard_seconds=round(sum(m["seconds"] for m in committed.values()), 3),
        head=head,
        truncated=sum(int(m.get("truncated") or 0) for m in committed.values()),
        max_error_rate=float(manifest.spec_value("max_error_rate")),
        model_pin=manifest.model_pin,
        pinned=pin.label() if pin else "",
        reason=reason,
    )


def _state(failure: dict[str, Any] | None, shards: int, committed: int, failed: int, rows: int, row_errors: int,
           max_error_rate: float) -> tuple[str, str]:
    """(state, reason) as ``status`` has it: _FAILED, too many row errors (an output written before _FAILED
    has _SUCCESS there) or shards failed for good mean failed."""
    if failure is not None:
        return "failed", str(failure.get("reason", ""))
    return outcome(shards, committed, failed, rows, row_errors, max_error_rate) or ("incomplete", "")


def render(described: OutputDescription) -> Any:
    """A rich renderable: the job, its counts, its schema and its first rows."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    d = described
    colour = {"complete": "green", "failed": "red"}.get(d.state, "yellow")
    title = Text.assemble(("output ", "bold"), (d.output, "bold"), "  ", (d.state, colour),
                          *((f" ({d.reason})", colour),) if d.reason else ())
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    wall = f"{d.completed_at - d.created_at:,.1f}s" if d.completed_at else "-"
    for name, value in [
        ("job", f"{d.job_id} (task {d.task})"),
        ("model", d.pinned or (d.model + (f" @ {d.revision}" if d.revision else "") + " (not pinned)")),
        ("rows", f"{d.rows:,} of {d.rows_expected:,} in {d.parts} of {d.shards} parts; {d.row_errors:,} row errors"
                 + (f" (more than max_error_rate {d.max_error_rate:.0%}: the job failed)"
                    if d.row_errors > d.max_error_rate * d.rows else "")
                 + (f"; {d.truncated:,} truncated" if d.truncated else "")
                 + (f"; {d.failed_shards} shards failed" if d.failed_shards else "")),
        ("time", f"submitted {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d.created_at))}, "
                 f"{wall} to complete, {d.shard_seconds:,.1f}s in shards"),
        ("versions", ", ".join(f"{k} {v}" for k, v in d.versions.items())),
        ("read with", f"duckdb: SELECT * FROM '{d.output.rstrip('/')}/*.parquet'"),
    ]:
        facts.add_row(name, value)
    schema = Table("column", "type", title="schema" + ("" if d.schema_matches_manifest else
                                                        " (differs from the manifest!)"),
                   title_justify="left", header_style="bold", box=None)
    for column in d.schema:
        schema.add_row(column["name"], column["type"])
    parts: list[Any] = [title, facts, schema]
    if d.head:
        parts.append(Text(f"first {len(d.head)} rows", style="bold"))
    for number, row in enumerate(d.head):  # one row per block, a value per line: fits 80 columns
        record = Table.grid(padding=(0, 2))
        record.add_column(style="bold", no_wrap=True, min_width=max(len(name) for name in row))
        record.add_column(no_wrap=True, overflow="ellipsis")
        for name, value in row.items():
            record.add_row(name, _cell(value))
        parts.append(Text(f"row {number + 1}", style="dim"))
        parts.append(record)
    return Group(*parts)


def _normalised(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
    """Parquet names a list's items ``element`` where Arrow says ``item``: the same type."""
    return [(column["name"], column["type"].replace("list<element: ", "list<item: ")) for column in schema]


def _cell(value: Any) -> str:
    """One line: JSON spelling (null, true), long lists as their length and first items."""
    if isinstance(value, list) and value:
        shown = _json(value[0]) + (", ..." if len(value) > 1 else "")
        text = f"{len(value)} item{'s' if len(value) > 1 else ''}: [{shown}]"
    else:
        text = value if isinstance(value, str) else _json(value)
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False, separators=(", ", ": "))
