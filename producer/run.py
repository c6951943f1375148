"""Run a job to the end from this process: submit, watch with a progress bar, summarise.

With no broker given, ``run`` brings its own: a private Redis server and local
worker processes, all stopped when the job ends.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any

from jobs.settings import Settings
from jobs.spec import JobSpec
from producer.embedded import EmbeddedRedis, LocalWorkers
from producer.status import JobStatus, wait
from producer.submit import submit


def run(
    spec: JobSpec,
    broker_url: str | None = None,
    workers: int = 1,
    progress: bool = True,
    timeout: float | None = None,
    log_dir: str | None = None,
) -> JobStatus:
    """Run ``spec`` to completion; the final status says whether any shard failed."""
    broker_url = broker_url or os.environ.get("BATCHFORMERS_BROKER_URL")
    with ExitStack() as stack:
        if broker_url is None:
            broker_url = stack.enter_context(EmbeddedRedis()).url
            stack.enter_context(LocalWorkers(broker_url, count=workers, log_dir=log_dir))
        settings = Settings(broker_url=broker_url)
        submission = submit(spec, settings)
        bar = stack.enter_context(_ProgressBar(submission.rows, progress))
        return wait(submission.output, timeout=timeout, on_update=bar.update)


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
