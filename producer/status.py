"""A job's state, from the broker's ledger when it has one, else from the output location.

Where the numbers come from, cheapest first:

1. **The ledger** (:mod:`jobs.ledger`): the broker's Redis counts committed shards, rows,
   errors and the commits' time span as workers commit, and knows which shards are
   running (a set of started shards, each checked against its lease
   ``batchformers:lease:<job_id>:<shard>``). A refresh costs a few Redis calls and two
   small reads of the output (manifest, cancel flag), whatever the job's size; failed
   shards are checked against their failure markers (a retry removes them).
2. **``_SUCCESS``** (or **``_FAILED``**) of a finished job whose ledger has expired: one read.
3. **The markers**: their names are listed and the markers read (only new ones, when a
   :class:`MarkerCache` is carried from one refresh to the next, as ``follow`` and
   ``wait`` do). This is the path without a broker, so ``status`` works from any machine
   that can read the output; running shards are then counted from the leases if the
   broker answers, and are unknown (``None``) rather than wrong if it does not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from jobs.io.completion import ERROR_RATE_NOTE, outcome
from jobs.io.layout import OutputLayout
from jobs.ledger import Ledger, Tally, marker_times
from jobs.manifest import Manifest
from jobs.pinning import pin_of
from jobs.protocol import DEFAULT_PRIORITY, LEASE_PREFIX, lease_key
from jobs.settings import Settings
from producer.interruption import interruption

BROKER_TIMEOUT = 3.0
DEFAULT_WATCH_INTERVAL = 2.0
ERROR_WIDTH = 200
FIRST_ERRORS = 3


@dataclass(frozen=True)
class JobStatus:
    """One look at a job. ``running`` is None when the broker was not asked or not reachable."""

    job_id: str
    output: str
    state: str  # queued | running | complete | failed | cancelled | interrupted (see job_state)
    shards: int
    committed: int
    failed: int
    pending: int
    rows: int
    rows_done: int
    row_errors: int
    rows_per_second: float | None
    eta_seconds: float | None
    failures: dict[int, str] = field(default_factory=dict)
    running: int | None = None
    running_shards: list[int] = field(default_factory=list)
    broker: str = "not asked"  # not asked | reachable | unreachable: <why>
    elapsed_seconds: float = 0.0
    task: str = ""
    note: str = ""  # why the job failed or is interrupted, when it is
    truncated: int = 0  # rows whose input was cut to the model's length (a `truncated` output column)
    first_errors: list[str] = field(default_factory=list)  # of rows, when the error rate failed the job
    source: str = ""  # where the counts came from: ledger | success | failed (_FAILED) | markers
    model: str = ""  # the model as pinned at submit (jobs.pinning), else as the spec names it
    priority: int = DEFAULT_PRIORITY  # the spec's priority, when it has one

    @property
    def finished(self) -> bool:
        """Nothing more will happen unless someone acts (an unreachable broker may come back).

        With every shard counted but the state still "running", the last commit is writing _SUCCESS."""
        stopped = self.state == "interrupted" and not self.broker.startswith("unreachable")
        return ((self.committed + self.failed >= self.shards and self.state != "running")
                or self.state == "cancelled" or stopped)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def status(job: str, settings: Settings | None = None) -> JobStatus:
    """The status of a job given its id (looked up on the broker) or its output location."""
    from producer.job_index import resolve

    settings = settings or Settings()
    return job_status(resolve(settings, job), settings)


MarkerCache = dict[int, dict[str, Any]]
"""Commit markers already read, by shard: markers never change once written."""


def job_status(output: str, settings: Settings | None = None, cache: MarkerCache | None = None) -> JobStatus:
    """Read the job at ``output``; with ``settings``, from the broker's ledger and leases when it answers."""
    layout = OutputLayout(output)
    manifest = layout.read_manifest()
    tally: Tally | None = None
    client: redis.Redis | None = None
    broker = "not asked"
    if settings is not None:
        client = _client(settings)
        try:
            tally = _from_ledger(Ledger.for_manifest(client, manifest), layout)
            broker = "reachable"
        except redis.RedisError as exc:
            client.close()
            client, broker = None, f"unreachable: {type(exc).__name__}: {exc}"
    source = "ledger"
    if tally is None:
        tally, source = _from_completion(layout, manifest) or (_from_listing(layout, manifest, cache), "markers")
    committed, failed = tally.committed, {k: v for k, v in tally.failed.items() if k not in tally.committed}
    rows_done = tally.rows
    rate = _rate(tally, manifest.created_at)
    remaining = manifest.total_rows - rows_done - sum(manifest.shards[i].rows for i in failed)
    running: list[int] | None = None
    unfinished = len(committed) + len(failed) < len(manifest.shards)
    if client is not None and (unfinished or layout.is_cancelled()):
        try:
            leased = tally.running if source == "ledger" else running_shards(settings, manifest.job_id, client)
            running = sorted(leased - committed - set(failed))
        except OSError as exc:
            broker = f"unreachable: {exc}"
    elif client is not None:
        running, broker = [], "not needed"
    if client is not None:
        client.close()
    pending = len(manifest.shards) - len(committed) - len(failed) - len(running or [])
    state, note = job_state(
        shards=len(manifest.shards), committed=len(committed), failed=len(failed),
        cancelled=layout.is_cancelled(), interrupted=interruption(layout), running=running, broker=broker,
        rows_done=rows_done, row_errors=tally.errors,
        max_error_rate=float(manifest.spec_value("max_error_rate")),  # no spec validation: status imports no task
    )
    if state in ("complete", "failed") and len(committed) == len(manifest.shards) and source == "ledger" \
            and not layout.is_finished():
        state = "running"  # every shard is counted; the last commit is still writing _SUCCESS or _FAILED
    first_errors = _first_errors(layout, sorted(committed)) if note.startswith(ERROR_RATE_NOTE) else []
    finished_at = tally.last_commit if tally.last_commit is not None else time.time()
    return JobStatus(
        job_id=manifest.job_id,
        output=output,
        state=state,
        shards=len(manifest.shards),
        committed=len(committed),
        failed=len(failed),
        pending=pending,
        rows=manifest.total_rows,
        rows_done=rows_done,
        row_errors=tally.errors,
        rows_per_second=rate,
        eta_seconds=remaining / rate if rate and remaining > 0 and state == "running" else None,
        failures=failed,
        running=None if running is None else len(running),
        running_shards=running or [],
        broker=broker,
        elapsed_seconds=round((finished_at if state == "complete" else time.time()) - manifest.created_at, 3),
        task=str(manifest.spec.get("task", "")),
        note=note,
        truncated=tally.truncated,
        first_errors=first_errors,
        source=source,
        model=pinned_model(manifest),
        priority=priority_of(manifest),
    )


def priority_of(manifest: Manifest) -> int:
    """The spec's ``priority`` (0-9, higher first) when it has one, else the default."""
    priority = manifest.spec.get("priority")
    return DEFAULT_PRIORITY if priority is None else int(priority)


def pinned_model(manifest: Manifest) -> str:
    """The pin in one line; the spec's model (and revision) for a job submitted before pins."""
    pin = pin_of(manifest)
    if pin is not None:
        return pin.describe()
    model = str(manifest.spec.get("model") or "")
    revision = manifest.spec.get("revision")
    return f"{model} @ {revision} (not pinned)" if revision else f"{model} (not pinned)"


def job_state(*, shards: int, committed: int, failed: int, cancelled: bool, interrupted: dict[str, Any] | None,
              running: list[int] | None, broker: str, rows_done: int, row_errors: int,
              max_error_rate: float) -> tuple[str, str]:
    """(state, note) of a job from its counts; the note says why it failed or stopped.

    complete    every shard committed, row errors within max_error_rate
    failed      every shard committed or failed, with a failed shard or too many row errors
    cancelled   ``batchformers cancel``
    interrupted ``run`` was stopped with its embedded broker, the job was never enqueued,
                or the broker cannot be reached: nothing runs it now
    queued      nothing committed, failed or running yet
    running     otherwise
    """
    if cancelled and committed < shards:
        return "cancelled", ""
    finished = outcome(shards, committed, failed, rows_done, row_errors, max_error_rate)
    if finished is not None:
        return finished
    if interrupted is not None:
        return "interrupted", f"{interrupted.get('reason', 'interrupted')}; submit or run the job again to resume"
    if broker.startswith("unreachable"):
        return "interrupted", f"the broker is {broker}: no shard can run until it is back"
    if committed == 0 and failed == 0 and not running:
        return "queued", ""
    return "running", ""


def _first_errors(layout: OutputLayout, committed: list[int], count: int = FIRST_ERRORS) -> list[str]:
    """The first few distinct row errors, read from the parts (in shard order) until found."""
    found: list[str] = []
    for shard in committed:
        try:
            errors = layout.row_errors(shard)
        except (OSError, KeyError, ValueError):
            continue
        for error in errors:
            if error is not None and error not in found:
                found.append(error)
                if len(found) >= count:
                    return found
    return found


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.broker_url, socket_timeout=BROKER_TIMEOUT,
                                socket_connect_timeout=BROKER_TIMEOUT)


def _from_ledger(ledger: Ledger, layout: OutputLayout) -> Tally | None:
    """The ledger's tally, made whole: unread markers folded in once, stale failures and runs dropped."""
    tally = ledger.read()
    if tally is None:
        return None
    if tally.unread:  # a rebuilt ledger: read those markers once, for everyone after us
        for shard, marker in layout.read_committed(sorted(tally.unread)).items():
            ledger.absorb(shard, marker)
        tally = ledger.read() or tally
    failed = dict(tally.failed)
    if failed:  # `retry` and a resubmit remove failure markers: a shard without one is pending again
        gone = set(failed) - set(layout.read_failed(sorted(failed)))
        ledger.forget_failure(gone)
        failed = {k: v for k, v in failed.items() if k not in gone}
    running = set(tally.running)
    if running:  # a worker that died leaves its entry; its lease expires within a lease
        ordered = sorted(running)
        pipe = ledger.client.pipeline()
        for shard in ordered:
            pipe.exists(lease_key(ledger.job_id, shard))
        running = {shard for shard, alive in zip(ordered, pipe.execute(), strict=True) if alive}
    return Tally(shards=tally.shards, committed=tally.committed, unread=set(), failed=failed, running=running,
                 rows=tally.rows, errors=tally.errors, first_start=tally.first_start,
                 last_commit=tally.last_commit, finished_at=tally.finished_at, truncated=tally.truncated)


def _from_completion(layout: OutputLayout, manifest: Manifest) -> tuple[Tally, str] | None:
    """A finished job's totals from its _SUCCESS (or _FAILED) marker, when it has one."""
    done, source = layout.completion(), "success"
    if done is None:
        done, source = layout.job_failure(), "failed"
    if done is None or int(done.get("shards", -1)) != len(manifest.shards):
        return None
    return Tally(shards=len(manifest.shards), committed=set(range(len(manifest.shards))), unread=set(), failed={},
                 running=set(), rows=int(done["rows"]), errors=int(done["errors"]),
                 first_start=done.get("first_start"), last_commit=done.get("last_commit", done.get("completed_at")),
                 finished_at=done.get("completed_at"), truncated=int(done.get("truncated") or 0)), source


def _from_listing(layout: OutputLayout, manifest: Manifest, cache: MarkerCache | None = None) -> Tally:
    """Counts from the markers themselves: one listing, then a read of every marker not in ``cache``."""
    cache = {} if cache is None else cache
    committed_names, failed_names = layout.marker_numbers()
    cache.update(layout.read_committed(sorted(committed_names - set(cache))))
    markers = {shard: cache[shard] for shard in committed_names if shard in cache}
    failed = {k: str(v.get("error", "")) for k, v in layout.read_failed(sorted(failed_names - set(markers))).items()}
    times = [marker_times(m) for m in markers.values()]
    return Tally(shards=len(manifest.shards), committed=set(markers), unread=set(), failed=failed, running=set(),
                 rows=sum(int(m["rows"]) for m in markers.values()),
                 errors=sum(int(m["errors"]) for m in markers.values()),
                 first_start=min((t[0] for t in times), default=None),
                 last_commit=max((t[1] for t in times), default=None),
                 truncated=sum(int(m.get("truncated") or 0) for m in markers.values()))


def running_shards(settings: Settings | None, job_id: str, client: redis.Redis | None = None) -> set[int]:
    """Shards of ``job_id`` whose lease is held on the broker; OSError when it cannot be reached.

    This scans the broker's keys: the path for jobs without a ledger only.
    """
    own = client is None
    if client is None:
        assert settings is not None
        client = _client(settings)
    prefix = f"{LEASE_PREFIX}{job_id}:"
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
    except redis.RedisError as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if own:
            client.close()
    shards = set()
    for key in keys:
        suffix = (key.decode() if isinstance(key, bytes) else key).removeprefix(prefix)
        if suffix.isdigit():
            shards.add(int(suffix))
    return shards


def _rate(tally: Tally, created_at: float) -> float | None:
    """Rows per second since the first commit's shard started (or since submit)."""
    if not tally.committed or tally.last_commit is None:
        return None
    first_start = tally.first_start if tally.first_start is not None else created_at
    elapsed = max(tally.last_commit - max(first_start, created_at), 1e-3)
    return tally.rows / elapsed


def wait(output: str, poll: float = 0.5, timeout: float | None = None, on_update: Any = None,
         settings: Settings | None = None) -> JobStatus:
    """Poll until every shard is committed or failed, or the job is cancelled.

    With ``settings`` each poll reads the broker's ledger, and the wait takes over dead
    workers' shards and re-enqueues lost ones (:mod:`producer.heal`); without, the markers
    are read (each one once).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    cache: MarkerCache = {}
    watcher = _watcher(settings, output)
    while True:
        status = job_status(output, settings, cache)
        if on_update:
            on_update(status)
        if status.finished:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {status.job_id} not finished after {timeout}s: {status}")
        if watcher is not None:
            watcher.tick()
        time.sleep(poll)


def _watcher(settings: Settings | None, output: str) -> Any:
    from producer.heal import Watcher

    return None if settings is None else Watcher(settings, output)


# -- on the terminal ----------------------------------------------------------


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
        parts.append(Text(f"running shards: {_ranges(status.running_shards)}"))
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


def truncated_note(status: JobStatus) -> str:
    """What a count of truncated rows means, and how to avoid it."""
    advice = "set params.stride to cover long texts in overlapping windows" if status.task == "ner" else (
        "the truncated column says which")
    return (f"{status.truncated:,} rows were longer than the model takes and were cut to its length; {advice}")


def follow(job: str, settings: Settings, interval: float = DEFAULT_WATCH_INTERVAL) -> Iterator[JobStatus]:
    """Yield the status now and every ``interval`` seconds, the last one when the job has finished.

    Meanwhile it takes over dead workers' shards and re-enqueues lost ones, as workers do."""
    current = status(job, settings)
    yield current
    cache: MarkerCache = {}
    watcher = _watcher(settings, current.output)  # a watch heals the job too (producer.heal)
    while not current.finished:
        watcher.tick()
        time.sleep(interval)
        current = job_status(current.output, settings, cache)
        yield current


def watch(job: str, settings: Settings, interval: float = DEFAULT_WATCH_INTERVAL, console: Any = None) -> JobStatus:
    """Redraw the status table until the job finishes (or Ctrl-C)."""
    from rich.live import Live

    updates = follow(job, settings, interval)
    current = next(updates)
    with Live(render(current), console=console, auto_refresh=False) as live:
        for current in updates:
            live.update(render(current), refresh=True)
    return current


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``1-3, 7``."""
    spans: list[list[int]] = []
    for number in sorted(numbers):
        if spans and spans[-1][1] == number - 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
