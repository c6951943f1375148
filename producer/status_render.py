"""A job's status for people: a rich table (``status``, ``status --watch``) and a plain summary (``run``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producer.status import JobStatus

ERROR_WIDTH = 200


def render(status: JobStatus) -> Any:
    """A rich renderable: shard counts, rows, speed, ETA, then the failed shards."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    colour = {"complete": "green", "failed": "red", "cancelled": "yellow", "interrupted": "yellow"}.get(
        status.state, "cyan")
    title = Text.assemble(("job ", "bold"), (status.job_id, "bold"), "  ", (status.state, f"bold {colour}"))
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for name in ("pending", "running", "committed", "failed", "shards"):
        table.add_column(name, justify="right")
    running = "?" if status.running is None else str(status.running)
    table.add_row(str(status.pending), running, str(status.committed),
                  Text(str(status.failed), style="red" if status.failed else ""), str(status.shards))
    rows = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for name in ("rows done", "of", "row errors", "rows/s", "elapsed", "ETA"):
        rows.add_column(name, justify="right")
    rate = f"{status.rows_per_second:,.1f}" if status.rows_per_second else "-"
    eta = duration(status.eta_seconds) if status.eta_seconds else "-"
    rows.add_row(f"{status.rows_done:,}", f"{status.rows:,}", f"{status.row_errors:,}", rate,
                 duration(status.elapsed_seconds), eta)
    parts: list[Any] = [title]
    if status.note:
        parts.append(Text(status.note, style=colour))
    if status.model:
        parts.append(Text(f"model: {status.model}", style="dim"))
    parts += [table, rows]
    if status.row_errors:
        parts.append(Text(f"{status.row_errors:,} rows have an error (see the error column of those rows)", style="red"))
    for error in status.first_errors:
        parts.append(Text(f"  {error[:ERROR_WIDTH]}", style="red"))
    if status.truncated:
        parts.append(Text(truncated_note(status), style="yellow"))
    if status.running_shards:
        parts.append(Text(f"running shards: {ranges(status.running_shards)}"))
    if status.copies:
        parts.append(Text(f"speculative copies of slow shards started: {status.copies}", style="dim"))
    if status.broker.startswith("unreachable"):
        parts.append(Text(f"broker {status.broker} (running shards unknown; counted as pending)", style="yellow"))
    if status.failures:
        failures = Table("shard", "error", title="failed shards", title_justify="left", box=None,
                         header_style="bold")
        for shard, error in sorted(status.failures.items()):
            failures.add_row(str(shard), Text(error[:ERROR_WIDTH], style="red"))
        parts.append(failures)
    parts.append(Text(f"output: {status.output}", style="dim"))
    return Group(*parts)


def live(updates: Iterator[JobStatus], console: Any = None) -> JobStatus:
    """Redraw the status table for each of ``updates`` (as :func:`producer.watch.follow` yields them); the last."""
    from rich.live import Live

    current = next(updates)
    with Live(render(current), console=console, auto_refresh=False) as live_table:
        for current in updates:
            live_table.update(render(current), refresh=True)
    return current


def truncated_note(status: JobStatus) -> str:
    """What a count of truncated rows means, and how to avoid it."""
    advice = "set params.stride to cover long texts in overlapping windows" if status.task == "ner" else (
        "the truncated column says which")
    return (f"{status.truncated:,} rows were longer than the model takes and were cut to its length; {advice}")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``1-3, 7``."""
    spans: list[list[int]] = []
    for number in sorted(numbers):
        if spans and spans[-1][1] == number - 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def report_hint(output: str) -> str:
    """The command that makes the job's HTML report."""
    return f"report: batchformers report {output}"


def summary(status: JobStatus) -> str:
    """The plain lines ``run`` prints when the job ends: state, counts, errors, output and report."""
    rate = f"{status.rows_per_second:,.1f} rows/s" if status.rows_per_second else "-"
    lines = [f"job {status.job_id}: {status.state.upper() if status.state != 'complete' else status.state}"]
    if status.note:
        lines.append(f"  {status.note}")
    lines.append(f"  shards: {status.committed} committed, {status.failed} failed, {status.pending} pending "
                 f"(of {status.shards})")
    lines.append(f"  rows:   {status.rows_done:,} of {status.rows:,} done, {rate}")
    if status.row_errors:
        share = status.row_errors / max(status.rows_done, 1)
        lines.append(f"  ERRORS: {status.row_errors:,} rows ({share:.0%}) have an error (the error column says why)")
    else:
        lines.append("  errors: none")
    lines += [f"    {error[:ERROR_WIDTH]}" for error in status.first_errors]
    if status.truncated:
        lines.append(f"  truncated: {truncated_note(status)}")
    if status.eta_seconds:
        lines.append(f"  eta:    {status.eta_seconds:,.0f}s")
    lines += [f"  shard {shard} failed: {error}" for shard, error in sorted(status.failures.items())]
    lines += [f"  output: {status.output}", f"  {report_hint(status.output)}"]
    return "\n".join(lines)
