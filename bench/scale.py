"""Scale: a shard's cost must not grow with the number of shards (``python -m bench --scale``).

Everything runs against a local moto S3 server (input and output on ``s3://``) and a
private Redis, with one warm worker:

- **many shards**: tokenize jobs of 400 and 2,000 one-row shards. The commit rate over
  the first 50 shards and over the last 50 (from the markers' ``committed_at``) shows
  whether a commit gets slower as the job fills up; then ``status`` on the finished job
  is timed (in process: the function the CLI calls, without the CLI's imports).
- **many input files**: ``submit`` of a job over 1,000 (and 10,000) small Parquet files,
  i.e. planning from their footers plus enqueueing one task per file.

The job's end is awaited by polling ``_SUCCESS`` only, so that the wait itself does not
load the S3 server. The module runs on its own too (``python bench/scale.py``), which is
how the figures of older code are taken: ``PYTHONPATH=<old checkout> python bench/scale.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_SHARDS = (400, 2000)
DEFAULT_FILES = (1000,)
DEFAULT_STATUS_SHARDS = (5000,)
WINDOW = 50  # shards at the start and at the end whose commit rates are compared
UPLOAD_THREADS = 16
JOB_TIMEOUT = 3600.0


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [scale] {message}", file=sys.stderr, flush=True)


class MotoS3:
    """A moto S3 server on a free port, with the ``AWS_*`` variables every process reads."""

    def __enter__(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the OS picks a free port
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
        self.saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        _forget_s3_clients()  # fsspec caches filesystems by their arguments: one of an earlier server would be reused
        return self

    def bucket(self) -> str:
        import boto3

        name = f"bf-scale-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=name)
        return name

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        _forget_s3_clients()
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _forget_s3_clients() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def _spec(model: str, input_url: str, output: str, shard_rows: int) -> dict[str, Any]:
    return {"task": "tokenize", "model": model, "input": input_url, "output": output,
            "columns": {"text": "text", "id": "id"}, "shard_rows": shard_rows}


def _put(url: str, data: bytes) -> None:
    from jobs.io.storage import Storage

    storage = Storage.at(url)
    storage.fs.pipe_file(storage.root, data)


def _parquet_bytes(texts: list[str], first_id: int = 0) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": [f"row-{first_id + i}" for i in range(len(texts))], "text": texts}), buffer)
    return buffer.getvalue()


def _timed_status(output: str, settings: Any, repeats: int = 3) -> tuple[Any, list[float]]:
    """The job's status, read ``repeats`` times; the last answer and the seconds of each read."""
    from producer.status import job_status

    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        current = job_status(output, settings)
        seconds.append(time.perf_counter() - began)
    return current, seconds


def _markers(output: str) -> list[dict[str, Any]]:
    """Every commit marker of ``output``, read concurrently (measurement only)."""
    from jobs.io.storage import Storage

    storage = Storage.at(output)
    names = [n for n in storage.list("_batchformers", "shards") if not n.endswith(".failed.json")]
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        return list(pool.map(lambda n: json.loads(storage.read_bytes("_batchformers", "shards", n)), names))


def _rate(times: list[float]) -> float:
    return (len(times) - 1) / max(times[-1] - times[0], 1e-9)


def many_shards(model: str, s3: MotoS3, broker_url: str, queue: str, shards: int,
                local: Path | None = None) -> dict[str, Any]:
    """A tokenize job of ``shards`` one-row shards on one warm worker; commit rates and status time.

    On the S3 server, or under the local directory ``local`` when given.
    """
    from bench import data
    from jobs.io.layout import OutputLayout
    from jobs.settings import Settings
    from jobs.spec import load_spec
    from producer.submit import submit

    if local is None:
        bucket = s3.bucket()
        input_url = f"s3://{bucket}/input/rows.parquet"
        output = f"s3://{bucket}/runs/scale-{shards}"
    else:
        import shutil

        folder = local / f"scale-{uuid.uuid4().hex[:6]}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        input_url, output = str(folder / "rows.parquet"), str(folder / "out")
    _put(input_url, _parquet_bytes(data.text_rows(shards, seed=13)))
    settings = Settings(broker_url=broker_url, queue=queue)
    started = time.perf_counter()
    submission = submit(load_spec(_spec(model, input_url, output, 1)), settings)
    submit_seconds = time.perf_counter() - started
    layout = OutputLayout(output)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not layout.is_complete():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {shards}-shard job did not complete in {JOB_TIMEOUT}s")
        time.sleep(1.0)
    job_seconds = time.perf_counter() - started
    final, status_times = _timed_status(output, settings)
    times = sorted(m["committed_at"] for m in _markers(output))
    completion = layout.completion() or {}
    return {
        "storage": "local disk" if local is not None else "s3 (moto)",
        "shards": submission.shards, "submit_seconds": submit_seconds, "job_seconds": job_seconds,
        "first_rate": _rate(times[:WINDOW]), "last_rate": _rate(times[-WINDOW:]),
        "last_over_first": _rate(times[-WINDOW:]) / _rate(times[:WINDOW]),
        "status_seconds": min(status_times), "status_seconds_all": status_times,
        "status_state": final.state, "status_rows_done": final.rows_done,
        "success_rows": completion.get("rows"), "markers": len(times),
    }


def status_at_scale(model: str, s3: MotoS3, broker_url: str, shards: int) -> dict[str, Any]:
    """``status`` of a job with ``shards`` commit markers on S3 (markers written as workers write them)."""
    import subprocess

    from bench import data
    from jobs.broker import client
    from jobs.settings import Settings
    from jobs.spec import load_spec
    from producer.status import job_status
    from producer.submit import prepare

    bucket = s3.bucket()
    input_url = f"s3://{bucket}/input/rows.parquet"
    _put(input_url, _parquet_bytes(data.text_rows(shards, seed=17)))
    output = f"s3://{bucket}/runs/status-{shards}"
    settings = Settings(broker_url=broker_url, queue=f"bf-scale-status-{uuid.uuid4().hex[:6]}")
    manifest, layout = prepare(load_spec(_spec(model, input_url, output, 1)), settings)
    try:  # what a worker does after its commit, when this code has a ledger
        from jobs.ledger import Ledger

        ledger: Any = Ledger.for_manifest(client(broker_url), manifest)
        ledger.rebuild([])  # as the first commit does
    except ImportError:
        ledger = None
    now = time.time()

    def commit(shard: int) -> None:
        marker = {"rows": 1, "errors": 0, "seconds": 0.01, "shard": shard, "part": f"part-{shard:05d}.parquet",
                  "committed_at": now + shard * 0.01, "worker": "bench"}
        layout.storage.write_atomic(json.dumps(marker).encode(), "_batchformers", "shards", f"{shard:05d}.json")
        if ledger is not None:
            ledger.record_commit(shard, marker)

    began = time.perf_counter()
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(commit, range(shards)))
    write_seconds = time.perf_counter() - began
    current, timed = _timed_status(output, settings)
    began = time.perf_counter()
    without_broker = job_status(output)
    listing_seconds = time.perf_counter() - began
    env = {**os.environ, "BATCHFORMERS_BROKER_URL": broker_url}
    began = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "producer.cli", "status", output, "--json"], capture_output=True,
                         text=True, env=env, timeout=600)
    cli_seconds = time.perf_counter() - began
    if cli.returncode != 0:
        raise RuntimeError(f"status failed: {cli.stderr}")
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import producer.cli, producer.status, jobs.io.layout, redis, rich"],
                   env=env, check=True, timeout=120)
    import_seconds = time.perf_counter() - began
    if ledger is not None and getattr(current, "source", "") != "ledger":
        raise RuntimeError(f"status did not read the ledger: {current}")
    return {"shards": shards, "status_seconds": min(timed), "status_seconds_all": timed,
            "committed": current.committed, "source": getattr(current, "source", "markers"),
            "without_broker_seconds": listing_seconds, "without_broker_committed": without_broker.committed,
            "cli_seconds": cli_seconds, "cli_import_seconds": import_seconds, "write_seconds": write_seconds}


def many_files(model: str, s3: MotoS3, broker_url: str, files: int) -> dict[str, Any]:
    """``submit`` of a job over ``files`` one-row Parquet files (planning plus enqueueing)."""
    from jobs.broker import client
    from jobs.settings import Settings
    from jobs.spec import load_spec
    from producer.submit import submit

    bucket = s3.bucket()
    queue = f"bf-scale-files-{uuid.uuid4().hex[:6]}"
    payloads = [_parquet_bytes([f"Sentence number {i} of the input."], i) for i in range(files)]
    began = time.perf_counter()
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(lambda i: _put(f"s3://{bucket}/many/part-{i:06d}.parquet", payloads[i]), range(files)))
    upload_seconds = time.perf_counter() - began
    settings = Settings(broker_url=broker_url, queue=queue)
    spec = load_spec(_spec(model, f"s3://{bucket}/many/", f"s3://{bucket}/runs/files-{files}", 10_000))
    began = time.perf_counter()
    submission = submit(spec, settings)
    seconds = time.perf_counter() - began
    client(broker_url).delete(queue)  # nobody runs this job
    return {"files": files, "shards": submission.shards, "submit_seconds": seconds,
            "upload_seconds": upload_seconds}


def run_scale(workdir: Path, shard_counts: tuple[int, ...] = DEFAULT_SHARDS,
              file_counts: tuple[int, ...] = DEFAULT_FILES, status_counts: tuple[int, ...] = DEFAULT_STATUS_SHARDS,
              local_counts: tuple[int, ...] = (), log: Any = _log) -> dict[str, Any]:
    from bench.models import model_dir
    from producer.embedded import EmbeddedRedis, LocalWorkers

    model = str(model_dir("tokenize", True, workdir))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "many_shards": [], "many_files": [],
                               "status": []}
    queue = f"bf-scale-{uuid.uuid4().hex[:6]}"
    with MotoS3() as s3, EmbeddedRedis(persist=False) as redis_server:
        if shard_counts or local_counts:
            with LocalWorkers(redis_server.url, count=1, queue=queue, log_dir=str(workdir / "logs-scale"),
                              extra_env={**s3.env, "BATCHFORMERS_TORCH_THREADS": "1"}):
                runs = [(n, None) for n in shard_counts] + [(n, workdir / "scale-local") for n in local_counts]
                for shards, local in runs:
                    log(f"{shards} one-row shards on {'local disk' if local else 's3'}, one worker")
                    result = many_shards(model, s3, redis_server.url, queue, shards, local)
                    log(f"{shards} shards: " + ", ".join(f"{k} {v:.3g}" for k, v in result.items()
                                                        if isinstance(v, float)))
                    results["many_shards"].append(result)
        for files in file_counts:
            log(f"submit over {files} input files on s3")
            result = many_files(model, s3, redis_server.url, files)
            log(f"{files} files: submit {result['submit_seconds']:.1f}s")
            results["many_files"].append(result)
        for shards in status_counts:
            log(f"status of a job with {shards} markers on s3")
            result = status_at_scale(model, s3, redis_server.url, shards)
            log(f"{shards} markers: " + ", ".join(f"{k} {v:.3g}" for k, v in result.items() if isinstance(v, float)))
            results["status"].append(result)
    return results


def markdown(results: dict[str, Any], label: str = "") -> str:
    lines = [f"Scale run {results['date']}{' (' + label + ')' if label else ''}:", "",
             "| storage | shards | first 50 shards/s | last 50 shards/s | last ÷ first | status s | job s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["many_shards"]:
        lines.append(f"| {r.get('storage', 's3 (moto)')} | {r['shards']:,} | {r['first_rate']:.2f} | {r['last_rate']:.2f} | "
                     f"{r['last_over_first']:.2f}× | {r['status_seconds']:.2f} | {r['job_seconds']:.0f} |")
    if results.get("status"):
        lines += ["", "| markers | status s (in process) | status s (CLI process) | of which imports s | "
                  "status s without broker |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['shards']:,} | {r['status_seconds']:.2f} | {r['cli_seconds']:.2f} | "
                  f"{r['cli_import_seconds']:.2f} | {r['without_broker_seconds']:.2f} |" for r in results["status"]]
    if results["many_files"]:
        lines += ["", "| input files | submit s |", "|---:|---:|"]
        lines += [f"| {r['files']:,} | {r['submit_seconds']:.1f} |" for r in results["many_files"]]
    return "\n".join(lines)


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default=",".join(map(str, DEFAULT_SHARDS)), help="one-row-shard jobs to run")
    parser.add_argument("--files", default=",".join(map(str, DEFAULT_FILES)), help="input-file counts to submit")
    parser.add_argument("--status", default=",".join(map(str, DEFAULT_STATUS_SHARDS)),
                        help="marker counts at which to time status")
    parser.add_argument("--local", default="", help="one-row-shard jobs to run on local disk")
    parser.add_argument("--workdir", type=Path, default=Path("out") / "bench")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--label", default="", help="a name for this run in the Markdown")
    args = parser.parse_args(argv)
    results = run_scale(args.workdir, _counts(args.shards), _counts(args.files), _counts(args.status),
                        _counts(args.local))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print(markdown(results, args.label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
