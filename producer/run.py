"""Run a job to the end from this process: submit, watch with a progress bar, summarise.

With no broker given, ``run`` brings its own: a private Redis server and local
worker processes, all stopped when the job ends. The workers start at once, alongside
``submit``: they boot, import torch and load the job's model (:mod:`producer.embedded`)
while the producer checks, plans and writes the manifest; a job whose output is already
complete starts none. Once every shard is committed or failed they are killed outright:
nothing they hold matters any more. Interrupted (Ctrl-C, SIGTERM,
SIGHUP), it stops them within a few seconds (a second Ctrl-C kills them at once),
marks the job interrupted and raises :class:`RunInterrupted`; committed shards are
kept, and running the job again resumes it. With a broker given, an interrupt only
stops the watching: the job goes on on the cluster.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from jobs.errors import BatchformersError
from jobs.io.layout import OutputLayout
from jobs.settings import Settings
from jobs.spec import JobSpec
from jobs.status_record import mirror
from producer.embedded import EmbeddedRedis, LocalWorkers
from producer.interruption import clear_run_here, mark_interrupted, mark_run_here

if TYPE_CHECKING:
    from producer.status import JobStatus
    from producer.submit import Submission
    from producer.warm_pool import WarmPool

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SUCCESS_WAIT_SECONDS = 5.0  # for the last commit's _SUCCESS, before its worker is killed
SUCCESS_POLL_SECONDS = 0.02
WAIT_POLL_SECONDS = 0.5  # the status of a job on a cluster
EMBEDDED_POLL_SECONDS = 0.1  # on the private Redis a poll costs ~10 ms: the end of a small job shows at once


def submit(spec: JobSpec, settings: Settings) -> Submission:
    """:func:`producer.submit.submit`, imported when called: the local workers are started first, and boot
    while this process imports what submitting and watching need (celery, kombu, the status model)."""
    from producer.submit import submit as submit_job

    return submit_job(spec, settings)


def wait(output: str, **options: Any) -> JobStatus:
    from producer.watch import wait as wait_for

    return wait_for(output, **options)


def job_status(output: str) -> JobStatus:
    from producer.status import job_status as status_of

    return status_of(output)


class RunInterrupted(BatchformersError):
    """Raised when ``run`` was stopped by a signal before its job finished."""

    def __init__(self, signum: int, status: JobStatus | None, embedded: bool) -> None:
        self.signum = signum
        self.status = status
        self.embedded = embedded
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _Signalled(BaseException):  # noqa: N818 - not an error: how a signal leaves the waiting loop
    def __init__(self, signum: int) -> None:
        self.signum = signum


def chosen_broker(broker_url: str | None = None) -> str | None:
    """The broker a run uses: the one given, else ``BATCHFORMERS_BROKER_URL``; None means an embedded
    Redis and local workers. The one place that decides."""
    return broker_url or os.environ.get("BATCHFORMERS_BROKER_URL") or None


def run(
    spec: JobSpec,
    broker_url: str | None = None,
    workers: int = 1,
    progress: bool = True,
    timeout: float | None = None,
    log_dir: str | None = None,
    on_submit: Callable[[Submission], None] | None = None,
    on_stopping: Callable[[int], None] | None = None,
    keep_warm: float | None = None,
) -> JobStatus:
    """Run ``spec`` to completion; the final status says whether the job failed.

    ``log_dir`` is where local workers write ``worker-N.log`` (a new temporary folder when
    None; never removed here). ``on_submit`` is called with the submission once the job
    is enqueued; ``on_stopping`` with the signal number when an interrupt starts the stop.
    ``keep_warm`` (default ``BATCHFORMERS_KEEP_WARM_SECONDS``): with no broker, run on a warm
    pool (:mod:`producer.warm_pool`) kept this many idle seconds for the next run; its logs
    are in :func:`producer.warm_pool.log_directory`, not ``log_dir``.
    """
    broker_url = chosen_broker(broker_url)
    embedded = broker_url is None
    if embedded and workers < 1:
        raise BatchformersError(f"workers must be at least 1 (got {workers}): with no broker, the job runs on "
                                "local workers only")
    if keep_warm is None:
        keep_warm = Settings().keep_warm_seconds
    output: str | None = None
    local: LocalWorkers | None = None
    pool: WarmPool | None = None
    run_marker = _RunMarker()
    with _signals_raise() as stopping, ExitStack() as stack:

        def start_workers(url: str) -> LocalWorkers:
            started = stack.enter_context(LocalWorkers(url, count=workers, log_dir=log_dir,
                                                       preload=(spec.output, spec.fingerprint())))
            stopping.forcible.append(started)
            return started

        try:
            if embedded and keep_warm > 0 and not _complete_already(spec):
                from producer.warm_pool import acquire

                pool = acquire(workers, keep_warm, preload=(spec.output, spec.fingerprint()))
                stack.enter_context(pool.attached())
                broker_url = pool.url
                stack.callback(run_marker.clear)
            elif embedded:
                server = stack.enter_context(EmbeddedRedis())
                stopping.forcible.append(server)
                broker_url = server.url
                stack.callback(run_marker.clear)  # after the workers stopped (entered later: they stop first)
                if not _complete_already(spec):  # they boot, and load the model, while submit checks and plans
                    local = start_workers(broker_url)
            assert broker_url is not None
            submission = _submit(spec, broker_url, local)
            output = submission.output
            if embedded and submission.enqueued:
                run_marker.mark(OutputLayout(output), broker_url, submission.job_id)
                if local is None and pool is None:  # the output said complete, yet a shard is not committed
                    local = start_workers(broker_url)
            elif local is not None:
                local.kill()  # nothing to run: they never had a shard
            if on_submit:
                on_submit(submission)
            with _ProgressBar(submission.rows, progress and not submission.already_complete) as bar:
                final = wait(submission.output, poll=EMBEDDED_POLL_SECONDS if embedded else WAIT_POLL_SECONDS,
                             timeout=timeout, on_update=bar.update, settings=Settings(broker_url=broker_url))
            stopping.signalled = True  # from here on a signal only hurries the stop along
            if local is not None and _nothing_left_to_write(final):
                # Every shard is committed (and _SUCCESS written) or failed for good: no worker holds
                # anything that matters, and the embedded Redis with its queue is thrown away next.
                # A warm shutdown would only wait for each pool's join (seconds); kill them instead.
                local.kill()
            return final
        except _Signalled as signalled:
            if on_stopping:
                on_stopping(signalled.signum)
            if local is not None:
                local.stop(fast=True)  # a cold shutdown, then the embedded Redis as the stack closes
            if pool is not None:
                pool.stop()  # its workers must not finish the job behind the interrupted run's back
            stack.close()
            status = job_status(output) if output else None
            if output and embedded and status is not None and not status.finished:
                marker = mark_interrupted(OutputLayout(output), f"batchformers run was stopped by "
                                                                f"{signal.Signals(signalled.signum).name}")
                if broker_url is not None:  # its Redis is down by now, unless a warm pool outlives it
                    mirror(broker_url, status.job_id, "interrupted", marker)
                status = job_status(output)
            raise RunInterrupted(signalled.signum, status, embedded) from None


def _complete_already(spec: JobSpec) -> bool:
    """The output holds a finished job (its ``_SUCCESS`` or ``_FAILED``): submit will most likely enqueue
    nothing, so no worker is started before it says so. A guess only: submit decides."""
    try:
        return OutputLayout(spec.output).is_finished()
    except (OSError, ValueError, BatchformersError):  # unreachable or not a location: submit says why
        return False


def _submit(spec: JobSpec, broker_url: str, local: LocalWorkers | None) -> Submission:
    """``submit``; workers started for the job are killed when it refuses (they never had a shard)."""
    try:
        return submit(spec, Settings(broker_url=broker_url))
    except Exception:
        if local is not None:
            local.kill()
        raise


def _nothing_left_to_write(status: JobStatus, wait_seconds: float = SUCCESS_WAIT_SECONDS) -> bool:
    """Every shard committed or failed for good, and ``_SUCCESS`` (or ``_FAILED``) written when all committed.

    The last commit writes ``_SUCCESS`` just after the count that ``status`` reads, so it may
    still be on its way: it is awaited (milliseconds) before the workers can be killed.
    """
    if status.committed + status.failed < status.shards:
        return False
    if status.committed < status.shards:
        return True
    layout = OutputLayout(status.output)
    deadline = time.monotonic() + wait_seconds
    while not layout.is_finished():
        if time.monotonic() > deadline:
            return False  # not written yet: a warm stop lets the worker finish writing it
        time.sleep(SUCCESS_POLL_SECONDS)
    return True


class _RunMarker:
    """The job's ``RUN`` marker (:func:`producer.interruption.mark_run_here`), cleared on the way out."""

    def __init__(self) -> None:
        self.layout: OutputLayout | None = None
        self.mirrored: tuple[str, str] | None = None  # (broker URL, job id) of its status record's copy

    def mark(self, layout: OutputLayout, broker_url: str, job_id: str) -> None:
        mirror(broker_url, job_id, "run", mark_run_here(layout))
        self.layout, self.mirrored = layout, (broker_url, job_id)

    def clear(self) -> None:
        if self.layout is not None:
            clear_run_here(self.layout)
        if self.mirrored is not None:
            mirror(*self.mirrored, "run", None)


class _Stopping:
    """What a second signal kills at once."""

    def __init__(self) -> None:
        self.signalled = False
        self.forcible: list[Any] = []


@contextmanager
def _signals_raise() -> Iterator[_Stopping]:
    """The first stop signal leaves the waiting loop; the next ones kill the local processes."""
    stopping = _Stopping()
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stopping.signalled:
            for item in stopping.forcible:
                item.force()
            return
        stopping.signalled = True
        raise _Signalled(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield stopping
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _ProgressBar:
    """Rows done, rows/s and ETA on the terminal (silent when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self.total = total
        self.progress: Any = None

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]rows"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            )
            self.progress.start()
            self.task = self.progress.add_task("rows", total=self.total, rate="")
        return self

    def update(self, status: JobStatus) -> None:
        if self.progress is not None:
            rate = f"{status.rows_per_second:,.0f} rows/s" if status.rows_per_second else ""
            self.progress.update(self.task, completed=status.rows_done, rate=rate)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
