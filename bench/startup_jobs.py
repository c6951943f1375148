"""The 5,000-shard job that ``--startup`` times ``status`` and ``jobs`` on, as a real one would be left.

Built on moto S3 by :func:`bench.scale.status_at_scale`, then finished as its last commit would
(``_SUCCESS``, the ledger's end) and given the status record ``submit`` writes; and the same job
copied to local disk, with the broker's index and record pointed at the copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

FIXTURE_MODEL = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "models" / "bert-ner"


def status_output(s3: Any, broker_url: str, shards: int) -> tuple[str, dict[str, Any]]:
    """A job with ``shards`` commit markers on S3, known to the broker: :func:`bench.scale.status_at_scale`
    builds it (and times status in process); its output location is the one run folder of its bucket."""
    import boto3

    from bench import scale
    from jobs.io.layout import OutputLayout
    from jobs.settings import Settings
    from producer.job_index import remember

    before = {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}
    in_process = scale.status_at_scale(str(FIXTURE_MODEL), s3, broker_url, shards)
    bucket = next(b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"] if b["Name"] not in before)
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="runs/", Delimiter="/")
    output = f"s3://{bucket}/{listing['CommonPrefixes'][0]['Prefix'].rstrip('/')}"
    manifest = OutputLayout(output).read_manifest()
    _finish(broker_url, manifest, OutputLayout(output))
    remember(Settings(broker_url=broker_url), manifest.job_id, output)
    _write_record(broker_url, manifest, output)
    return output, in_process


def _finish(broker_url: str, manifest: Any, layout: Any) -> None:
    """What the last commit does after its count: _SUCCESS, and the ledger's end. Without it the job would
    stay "every shard counted, _SUCCESS on its way" (a moment in a real job), which status asks the output."""
    from jobs.broker import client
    from jobs.io.completion import complete_if_last
    from jobs.ledger import Ledger

    last = len(manifest.shards) - 1
    connection = client(broker_url)
    try:
        complete_if_last(layout, manifest, last, layout.read_committed([last])[last],
                         Ledger.for_manifest(connection, manifest))
    finally:
        connection.close()


def _write_record(broker_url: str, manifest: Any, output: str) -> None:
    """The job's status record, as ``submit`` writes it (``status`` and ``jobs`` then read only Redis)."""
    from jobs.broker import client
    from jobs.status_record import record_of, write

    connection = client(broker_url)
    try:
        write(connection, record_of(manifest, output))
    finally:
        connection.close()


def local_copy(output: str, directory: Path, broker_url: str) -> str:
    """The S3 output copied to local disk, and the broker's job index pointed at the copy (same job, same ledger)."""

    import fsspec

    from jobs.io.layout import OutputLayout
    from jobs.settings import Settings
    from producer.job_index import remember

    shutil.rmtree(directory, ignore_errors=True)
    fsspec.filesystem("s3").get(output.rstrip("/") + "/", str(directory) + "/", recursive=True)
    manifest = OutputLayout(str(directory)).read_manifest()
    remember(Settings(broker_url=broker_url), manifest.job_id, str(directory))
    _write_record(broker_url, manifest, str(directory))
    return str(directory)
