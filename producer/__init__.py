"""Plan inputs into shards, write the manifest, enqueue, watch, and the CLI.

What the ``batchformers`` command does is importable::

    from producer import load_spec, run, status, submit

    spec = load_spec("job.yaml")                       # or a dict; SpecError names a bad field
    final = run(spec, workers=2)                       # embedded Redis + local workers, to the end
    submission = submit(spec, Settings(broker_url="redis://:pw@host:6379/0"))   # enqueue only
    current = status(submission.job_id)                # JobStatus (job id or output location)
    final = wait(submission.output, timeout=3600)      # poll until every shard is done
    described = inspect_output(submission.output)      # schema, counts, first rows
    hits = search("out/corpus-embeddings", "query text", top_k=10)   # nearest rows of an embeddings job
    found = preflight(spec, sample=4000, workers=4)    # batchformers plan: a sample's profile, a time estimate
    page = write_report(submission.output, out="report.html")   # batchformers report

Each name is imported on first use, so ``import producer.cli`` (every command) loads none of
them: ``batchformers --help`` or ``status`` does not pay for ``run``'s or ``submit``'s imports.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobs.settings import Settings
    from jobs.spec import JobSpec, load_spec
    from producer.inspect import OutputDescription
    from producer.inspect import describe as inspect_output
    from producer.preflight import preflight
    from producer.report import write_report
    from producer.run import run
    from producer.search import search
    from producer.status import JobStatus, job_status, status, wait
    from producer.submit import Submission, submit

_EXPORTS: dict[str, tuple[str, str]] = {  # public name -> (module, attribute)
    "JobSpec": ("jobs.spec", "JobSpec"),
    "JobStatus": ("producer.status", "JobStatus"),
    "OutputDescription": ("producer.inspect", "OutputDescription"),
    "Settings": ("jobs.settings", "Settings"),
    "Submission": ("producer.submit", "Submission"),
    "inspect_output": ("producer.inspect", "describe"),
    "job_status": ("producer.status", "job_status"),
    "load_spec": ("jobs.spec", "load_spec"),
    "preflight": ("producer.preflight", "preflight"),
    "run": ("producer.run", "run"),
    "search": ("producer.search", "search"),
    "status": ("producer.status", "status"),
    "submit": ("producer.submit", "submit"),
    "wait": ("producer.status", "wait"),
    "write_report": ("producer.report", "write_report"),
}
__all__ = [
    "JobSpec",
    "JobStatus",
    "OutputDescription",
    "Settings",
    "Submission",
    "inspect_output",
    "job_status",
    "load_spec",
    "preflight",
    "run",
    "search",
    "status",
    "submit",
    "wait",
    "write_report",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """``producer.run``, ``.status``, ``.search``, ``.submit`` and ``.preflight`` are functions, as they always were,
    although submodules of those names exist: importing one must not rebind the package's name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name, ("", ""))[0] == f"{__name__}.{name}":
            return  # the import system naming the submodule on its parent: the function keeps the name
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
