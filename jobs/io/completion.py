"""Job completion: count a shard's commit on the ledger and write the job's outcome after the last one.

The commit markers in the output are the truth; the ledger (:mod:`jobs.ledger`) is the broker's
cheap count of them. Every commit is counted there (one Redis call, whatever the job's size);
the commit that completes the count checks that every shard has its marker, once, and writes
the totals into ``_SUCCESS``. Without a ledger (lost, expired, never written) the marker names
are listed and the ledger is rebuilt from them. Shards finishing together may all see every
shard committed; ``_SUCCESS`` is created with O_EXCL (a conditional put on object stores), so
exactly one of them writes it. A job whose rows have more errors than its ``max_error_rate``
allows gets ``_FAILED`` (the same totals and the reason) instead: ``_SUCCESS`` means success.
No Celery here: the worker task calls these after a commit.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from jobs.ledger import Ledger, marker_times

if TYPE_CHECKING:  # ``status`` reads the outcome rule from the broker's counts alone: no storage import
    from jobs.io.layout import OutputLayout
    from jobs.manifest import Manifest

log = logging.getLogger(__name__)
ERROR_RATE_NOTE = "too many row errors"


def error_rate_note(row_errors: int, rows: int, max_error_rate: float) -> str | None:
    """Why a job whose every shard committed failed for its row errors; None when it did not."""
    if row_errors <= max_error_rate * rows:
        return None
    return (f"{ERROR_RATE_NOTE}: {row_errors:,} of {rows:,} rows have an error "
            f"({row_errors / max(rows, 1):.0%}), more than max_error_rate {max_error_rate:.0%} allows")


def outcome(shards: int, committed: int, failed: int, rows: int, row_errors: int,
            max_error_rate: float) -> tuple[str, str] | None:
    """(``complete`` | ``failed``, why) of a job with every shard committed or failed for good; None before.
    The one rule ``status``, ``inspect`` and ``jobs`` judge a finished job by."""
    if committed == shards:
        too_many = error_rate_note(row_errors, rows, max_error_rate)
        return ("failed", too_many) if too_many else ("complete", "")
    if committed + failed == shards:
        return "failed", f"{failed} shard{'s' if failed > 1 else ''} failed"
    return None


def complete_if_last(layout: OutputLayout, manifest: Manifest, shard: int | None = None,
                     marker: dict[str, Any] | None = None, ledger: Ledger | None = None) -> bool:
    """Count the commit of ``shard``; write _SUCCESS (or _FAILED) when it was the last. True for the one caller
    that wrote it."""
    total = len(manifest.shards)
    counted = None
    if ledger is not None and shard is not None and marker is not None:
        counted = ledger.record_commit(shard, marker)
        if counted is None:
            rebuild(layout, manifest, ledger, shard)
            counted = ledger.record_commit(shard, marker)
    if counted is not None:
        fresh, count = counted
        if count < total or (not fresh and layout.is_finished()):
            return False
    elif len(layout.marker_numbers()[0]) < total:
        return False
    summary = totals(layout, manifest, ledger if counted is not None else None)
    if summary is None:
        return False
    reason = error_rate_note(summary["errors"], summary["rows"], float(manifest.spec_value("max_error_rate")))
    written = layout.mark_complete(summary) if reason is None else layout.mark_job_failed({**summary, "reason": reason})
    if not written:
        return False
    if ledger is not None:
        ledger.finish(summary["completed_at"])
    if reason is None:
        log.info("batchformers: job %s complete: %s rows", manifest.job_id, summary["rows"])
    else:
        log.error("batchformers: job %s failed: %s", manifest.job_id, reason)
    return True


def count_committed(layout: OutputLayout, manifest: Manifest, shard: int, ledger: Ledger) -> None:
    """A shard found committed already (a redelivery): make sure the ledger counted it.

    A worker that died (or lost the broker) between writing the marker and counting it
    leaves its message unacked; the redelivered copy does the counting, and completes
    the job if that shard was the last.
    """
    marker = layout.read_committed([shard]).get(shard)
    if marker is not None:
        complete_if_last(layout, manifest, shard, marker, ledger)


def totals(layout: OutputLayout, manifest: Manifest, ledger: Ledger | None) -> dict[str, Any] | None:
    """The _SUCCESS summary after one pass over the markers; None when some shard has no marker after all.

    With a ledger the pass is a listing of the names (every shard must have its marker), and
    the totals are the ledger's, plus those of any marker it has not read (after a rebuild);
    without one, every marker is read.
    """
    total = len(manifest.shards)
    tally = None
    if ledger is not None:
        names = layout.marker_numbers()[0] & set(range(total))
        tally = ledger.read()
        if tally is not None and len(names) == total:
            for number, marker in layout.read_committed(sorted(tally.unread)).items():
                ledger.absorb(number, marker)
            tally = ledger.read() if tally.unread else tally
        if tally is None or tally.unread or len(names) < total:
            log.warning("job %s: the ledger counts every shard but %s of %s have a marker; rebuilding it",
                        manifest.job_id, len(names), total)
            ledger.drop()
            ledger.rebuild(names)
            return None
        rows, errors, first, last = tally.rows, tally.errors, tally.first_start, tally.last_commit
        truncated = tally.truncated
    else:
        markers = layout.read_committed(range(total))  # no ledger: read every marker, once
        if len(markers) < total:
            return None
        rows = sum(int(m["rows"]) for m in markers.values())
        errors = sum(int(m["errors"]) for m in markers.values())
        first = min(marker_times(m)[0] for m in markers.values())
        last = max(marker_times(m)[1] for m in markers.values())
        truncated = sum(int(m.get("truncated") or 0) for m in markers.values())
    return {"job_id": manifest.job_id, "rows": rows, "errors": errors, "truncated": truncated, "shards": total,
            "first_start": first, "last_commit": last, "completed_at": time.time()}


def rebuild(layout: OutputLayout, manifest: Manifest, ledger: Ledger, shard: int) -> None:
    """A new ledger from the marker names (committed shards are not read; the few failed ones are).

    Only other shards' markers mean the broker lost a ledger it had (a warning); with none, this is
    the job's first commit and its ledger is simply created here (a submit that does not create it).
    """
    committed, failed = layout.marker_numbers()
    others = committed - {shard}
    if others:
        log.warning("job %s: no ledger on the broker; rebuilt from %s commit markers", manifest.job_id,
                    len(committed))
    else:
        log.info("job %s: first commit; its ledger is created on the broker", manifest.job_id)
    ledger.rebuild(others)
    for number, record in layout.read_failed(sorted(failed - committed)).items():
        ledger.record_failure(number, str(record.get("error", "")))
