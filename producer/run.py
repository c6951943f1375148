"""Run a job to the end from this process: submit, watch with a progress bar, summarise.

With no broker given, ``run`` brings its own: a private Redis server and local
worker processes, all stopped when the job ends. Interrupted (Ctrl-C, SIGTERM,
SIGHUP), it stops them within a few seconds (a second Ctrl-C kills them at once),
marks the job interrupted and raises :class:`RunInterrupted`; committed shards are
kept, and running the job again resumes it. With a broker given, an interrupt only
stops the watching: the job goes on on the cluster.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import Any

from jobs.errors import BatchformersError
from jobs.io.layout import OutputLayout
from jobs.settings import Settings
from jobs.spec import JobSpec
from producer.embedded import EmbeddedRedis, LocalWorkers
from producer.interruption import clear_run_here, mark_interrupted, mark_run_here
from producer.status import JobStatus, job_status, wait
from producer.submit import Submission, submit

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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


def run(
    spec: JobSpec,
    broker_url: str | None = None,
    workers: int = 1,
    progress: bool = True,
    timeout: float | None = None,
    log_dir: str | None = None,
    on_submit: Callable[[Submission], None] | None = None,
    on_stopping: Callable[[int], None] | None = None,
) -> JobStatus:
    """Run ``spec`` to completion; the final status says whether the job failed.

    ``log_dir`` is where local workers write ``worker-N.log`` (a new temporary folder when
    None; never removed here). ``on_submit`` is called with the submission once the job
    is enqueued; ``on_stopping`` with the signal number when an interrupt starts the stop.
    """
    broker_url = broker_url or os.environ.get("BATCHFORMERS_BROKER_URL")
    embedded = broker_url is None
    if embedded and workers < 1:
        raise BatchformersError(f"workers must be at least 1 (got {workers}): with no broker, the job runs on "
                                "local workers only")
    output: str | None = None
    local: LocalWorkers | None = None
    with _signals_raise() as stopping, ExitStack() as stack:
        try:
            if embedded:
                server = stack.enter_context(EmbeddedRedis())
                stopping.forcible.append(server)
                broker_url = server.url
            assert broker_url is not None
            submission = submit(spec, Settings(broker_url=broker_url))
            output = submission.output
            if embedded and submission.enqueued:  # workers only for work: not for a finished job
                mark_run_here(OutputLayout(output))
                stack.callback(clear_run_here, OutputLayout(output))  # after the workers stopped
                local = stack.enter_context(LocalWorkers(broker_url, count=workers, log_dir=log_dir))
                stopping.forcible.append(local)
            if on_submit:
                on_submit(submission)
            with _ProgressBar(submission.rows, progress and not submission.already_complete) as bar:
                final = wait(submission.output, timeout=timeout, on_update=bar.update,
                             settings=Settings(broker_url=broker_url))
            stopping.signalled = True  # from here on a signal only hurries the stop along
            return final
        except _Signalled as signalled:
            if on_stopping:
                on_stopping(signalled.signum)
            if local is not None:
                local.stop(fast=True)  # a cold shutdown, then the embedded Redis as the stack closes
            stack.close()
            status = job_status(output) if output else None
            if output and embedded and status is not None and not status.finished:
                mark_interrupted(OutputLayout(output), f"batchformers run was stopped by "
                                                       f"{signal.Signals(signalled.signum).name}")
                status = job_status(output)
            raise RunInterrupted(signalled.signum, status, embedded) from None


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
