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
"""

from jobs.settings import Settings
from jobs.spec import JobSpec, load_spec
from producer.inspect import OutputDescription
from producer.inspect import describe as inspect_output
from producer.run import run
from producer.search import search
from producer.status import JobStatus, job_status, status, wait
from producer.submit import Submission, submit

__all__ = [
    "JobSpec",
    "JobStatus",
    "OutputDescription",
    "Settings",
    "Submission",
    "inspect_output",
    "job_status",
    "load_spec",
    "run",
    "search",
    "status",
    "submit",
    "wait",
]
