"""batchformers: batch jobs of Hugging Face NLP models over Arrow datasets, on Celery workers.

The public API, the same as the ``batchformers`` command::

    import batchformers as bf

    spec = bf.load_spec("job.yaml")                    # or a dict; SpecError names a bad field
    final = bf.run(spec, workers=2)                    # embedded Redis + local workers, to the end
    submission = bf.submit(spec, bf.Settings(broker_url="redis://:pw@host:6379/0"))   # enqueue only
    current = bf.status(submission.job_id)             # JobStatus, by job id or output location
    final = bf.wait(submission.job_id, timeout=3600)   # poll until every shard is done
    for current in bf.follow(submission.job_id): ...   # the status every 2 s until the job finishes
    bf.cancel(submission.job_id); bf.retry(submission.job_id)
    for line in bf.jobs(): print(line.job_id, line.state)
    described = bf.inspect_output(submission.output)   # schema, counts, first rows
    bf.compact(submission.output, target_mb=256)        # merge a finished job's small parts
    hits = bf.search("out/corpus-embeddings", "query text", top_k=10)   # nearest rows of an embeddings job
    found = bf.plan(spec, sample=4000, workers=4)      # pre-flight: a sample's profile and a time estimate
    page = bf.report(submission.job_id, out="report.html")   # one offline HTML page of the job

Every function takes ``settings: Settings | None`` (None: from the ``BATCHFORMERS_*``
environment). Each name is imported on first use, so ``import batchformers`` costs nothing.
Errors derive from :class:`BatchformersError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobs.errors import (
        BatchformersError,
        BrokerUnavailable,
        InputError,
        ModelLoadError,
        OutputError,
        RetryableError,
        ShardError,
        SpecError,
    )
    from jobs.settings import Settings
    from jobs.spec import JobSpec, load_spec
    from producer.api import (
        Retried,
        cancel,
        compact,
        follow,
        inspect_output,
        jobs,
        plan,
        report,
        retry,
        run,
        search,
        status,
        submit,
        wait,
    )
    from producer.inspect import OutputDescription
    from producer.jobs_view import JobLine
    from producer.run import RunInterrupted
    from producer.status import JobStatus
    from producer.submit import Submission

_EXPORTS: dict[str, str] = {  # public name -> the module it lives in
    **dict.fromkeys(["run", "submit", "status", "wait", "follow", "cancel", "retry", "jobs", "inspect_output",
                     "search", "plan", "report", "compact", "Retried"], "producer.api"),
    **dict.fromkeys(["BatchformersError", "SpecError", "InputError", "OutputError", "ModelLoadError", "ShardError",
                     "RetryableError", "BrokerUnavailable"], "jobs.errors"),
    "JobSpec": "jobs.spec",
    "load_spec": "jobs.spec",
    "Settings": "jobs.settings",
    "JobStatus": "producer.status",
    "JobLine": "producer.jobs_view",
    "OutputDescription": "producer.inspect",
    "Submission": "producer.submit",
    "RunInterrupted": "producer.run",
}
__all__ = [
    "BatchformersError",
    "BrokerUnavailable",
    "InputError",
    "JobLine",
    "JobSpec",
    "JobStatus",
    "ModelLoadError",
    "OutputDescription",
    "OutputError",
    "Retried",
    "RetryableError",
    "RunInterrupted",
    "Settings",
    "ShardError",
    "SpecError",
    "Submission",
    "cancel",
    "compact",
    "follow",
    "inspect_output",
    "jobs",
    "load_spec",
    "plan",
    "report",
    "retry",
    "run",
    "search",
    "status",
    "submit",
    "wait",
]


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
