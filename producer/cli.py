"""The batchformers command line.

The parser is built from the standard library alone and each command imports what it needs in
its handler, so ``--help``, ``--version`` and the commands that only read (``status``, ``jobs``,
``inspect`` ...) never load the job spec's validation, Celery or a model library
(``tests/producer/test_light_imports.py`` holds every command to that).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from jobs.errors import BatchformersError

if TYPE_CHECKING:
    from jobs.settings import Settings

EXIT_FAILED_SHARDS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parse(parser, argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        result: int = args.handler(args)
        return result
    except BatchformersError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `batchformers schema | head`: the reader has all it wanted
        _silence_stdout()
        return 0


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse; ``worker`` and ``flower`` pass options they do not know on to the worker / Flower."""
    args, unknown = parser.parse_known_args(argv)
    passthrough = getattr(args, "passthrough", None)
    if unknown and passthrough is None:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if passthrough is not None:
        setattr(args, passthrough, [*unknown, *getattr(args, passthrough)])
    return args


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _version() -> str:
    from importlib import metadata

    try:
        return f"batchformers {metadata.version('batchformers')}"
    except metadata.PackageNotFoundError:
        return "batchformers (not installed)"


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="show program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(_version())
        parser.exit()


BROKER_HELP = "broker URL (redis://[:PASSWORD@]HOST:PORT/DB); default: BATCHFORMERS_BROKER_URL"
JOB_HELP = "job id (as submit printed it) or output directory"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchformers", description="Batch jobs for Hugging Face NLP models: plan a dataset into shards, "
        "run them on Celery workers, write Parquet.",
        epilog="`batchformers COMMAND --help` shows the options of one command.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(title="commands")

    run = commands.add_parser("run", help="run a job to the end on this machine (or on --broker)",
                              description="Run a job to the end: with no broker, on an embedded Redis and local "
                              "workers (stopped when the job ends or on Ctrl-C). Exit 0 when complete, 1 when the "
                              "job failed, 130/143 when interrupted.")
    run.add_argument("job", help="job spec file (YAML or JSON)")
    run.add_argument("--broker", help="submit to this broker and wait, instead of an embedded Redis and local "
                                      "workers; default: BATCHFORMERS_BROKER_URL when set")
    run.add_argument("--workers", type=_positive_int, default=1,
                     help="local worker processes, one model each (embedded mode; default 1)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--output", help="write to this output directory instead of the spec's output")
    run.set_defaults(handler=_run)

    submit = commands.add_parser("submit", help="enqueue a job on the broker and print its id")
    submit.add_argument("job", help="job spec file (YAML or JSON)")
    submit.add_argument("--broker", help=BROKER_HELP)
    submit.add_argument("--output", help="write to this output directory instead of the spec's output")
    submit.set_defaults(handler=_submit)

    status = commands.add_parser("status", help="show a job's progress")
    status.add_argument("job", help=JOB_HELP)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", action="store_true", help="redraw until the job finishes (Ctrl-C stops)")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch")
    status.add_argument("--broker", help=BROKER_HELP + " (asked which shards are running)")
    status.set_defaults(handler=_status)

    worker = commands.add_parser("worker", help="start a worker (defaults for one GPU)", add_help=False)
    worker.set_defaults(handler=_worker, passthrough="worker_args", worker_args=[])

    cancel = commands.add_parser("cancel", help="stop starting new shards of a job")
    cancel.add_argument("job", help=JOB_HELP)
    cancel.add_argument("--broker", help=BROKER_HELP)
    cancel.set_defaults(handler=_cancel)

    retry = commands.add_parser("retry", help="re-enqueue only the failed shards of a job")
    retry.add_argument("job", help=JOB_HELP)
    retry.add_argument("--broker", help=BROKER_HELP)
    retry.set_defaults(handler=_retry)

    demo = commands.add_parser("demo", help="run the example NER job end to end and show its output")
    demo.add_argument("--workdir", default=".demo", help="where the demo writes its model and output")
    demo.add_argument("--workers", type=_positive_int, default=1, help="local worker processes (default 1)")
    demo.set_defaults(handler=_demo)

    flower = commands.add_parser("flower", help="start the Flower dashboard against the broker")
    flower.add_argument("--port", type=int, help="default: BATCHFORMERS_FLOWER_PORT (5555)")
    flower.add_argument("--address", default="127.0.0.1", help="listen address (0.0.0.0 in a container)")
    flower.add_argument("--basic-auth", metavar="USER:PASS",
                        help="ask for a login; default: BATCHFORMERS_FLOWER_BASIC_AUTH")
    flower.add_argument("--broker", help=BROKER_HELP)
    flower.add_argument("flower_args", nargs=argparse.REMAINDER, help="extra Flower options")
    flower.set_defaults(handler=_flower, passthrough="flower_args")

    inspect = commands.add_parser("inspect", help="show a job output's schema, counts and first rows")
    inspect.add_argument("output", help="output directory or URL (s3://...)")
    inspect.add_argument("--rows", type=int, default=5, help="how many rows to show (default 5)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(handler=_inspect)

    compact = commands.add_parser("compact", help="merge a finished job's small parts into large ones")
    compact.add_argument("output", help="output directory or URL (s3://...)")
    compact.add_argument("--target-mb", type=float, default=256, help="size of the merged parts (MB)")
    compact.set_defaults(handler=_compact)

    jobs = commands.add_parser("jobs", help="list the jobs submitted to the broker, newest first",
                               description="Every job the broker knows, newest first: state, priority, pinned "
                               "model, shards done/total, rows/s, ETA. status, cancel and retry take the job ids.")
    jobs.add_argument("--broker", help=BROKER_HELP)
    jobs.add_argument("--limit", type=int, default=50, help="show at most this many jobs (default 50)")
    jobs.add_argument("--json", action="store_true", help="machine-readable output (a list of objects)")
    jobs.set_defaults(handler=_jobs)
    search = commands.add_parser("search", help="rows of an embeddings job nearest to a query (cosine)")
    search.add_argument("output", help="output directory or URL of an embeddings job")
    search.add_argument("query", help="text to search for")
    search.add_argument("--top-k", type=int, default=10, help="how many rows to return")
    search.add_argument("--where", help="SQL condition on the rows' columns (DuckDB), e.g. \"lang = 'en'\"")
    search.add_argument("--method", default="duckdb", choices=["duckdb", "numpy"], help="scorer")
    search.add_argument("--json", action="store_true", help="one JSON object per row")
    search.set_defaults(handler=_search)

    report = commands.add_parser("report", help="an HTML page (offline) of a job's shards, workers, time and errors",
                                 description="One self-contained HTML file: shards per worker over time, "
                                 "throughput, where the time went, padding, stragglers, model loads, retries, "
                                 "failures and row errors. Works on a running job (what is committed so far).")
    report.add_argument("output", help="output directory or URL (s3://...)")
    report.add_argument("--out", help="the HTML file to write (default: report-<job id>.html here)")
    report.add_argument("--png", metavar="DIR", help="also write each chart as a PNG into DIR")
    report.set_defaults(handler=_report)

    plan = commands.add_parser("plan", help="a job's pre-flight: rows, shards, token lengths, bad rows, estimate",
                               description="Read a sample spread over the input and report, without a broker and "
                               "writing nothing: rows and shards, token lengths under the model's tokenizer, rows "
                               "over its limit, invalid and empty rows, duplicates, padding; then time the model on "
                               "part of the sample and estimate worker-seconds and wall time.")
    plan.add_argument("job", help="job spec file (YAML or JSON)")
    plan.add_argument("--sample", type=_positive_int, default=4000, help="rows to sample (default 4000)")
    plan.add_argument("--model-rows", type=_positive_int, default=256,
                      help="rows of the sample run through the model (default 256)")
    plan.add_argument("--workers", type=_positive_int, default=1, help="workers to estimate the wall time for")
    plan.add_argument("--no-model", action="store_true", help="do not run the model (no time estimate)")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(handler=_plan)

    schema = commands.add_parser("schema", help="print the JSON Schema of job specs")
    schema.set_defaults(handler=_schema)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    from jobs.settings import Settings

    broker = getattr(args, "broker", None)
    return Settings(broker_url=broker) if broker else Settings()


def _schema(args: argparse.Namespace) -> int:
    from jobs.spec import spec_json_schema

    return _print_json(spec_json_schema())


def _run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from jobs.spec import load_spec
    from producer.api import run
    from producer.run import RunInterrupted, chosen_broker

    spec = load_spec(args.job, output=args.output)
    embedded = chosen_broker(args.broker) is None
    log_dir = tempfile.mkdtemp(prefix="batchformers-run-") if embedded else None

    seen: list[Any] = []

    def submitted(submission: Any) -> None:
        seen.append(submission)
        _print_warnings(submission)
        if submission.already_complete:
            print(f"job {submission.job_id} is already complete (every shard was committed before); nothing to do. "
                  f"Its output: {submission.output}", file=sys.stderr)

    def stopping(signum: int) -> None:
        what = f"{args.workers} local worker(s) and the embedded Redis" if embedded else "watching"
        print(f"\n{signal.Signals(signum).name}: stopping {what} (again to force) ...", file=sys.stderr, flush=True)

    try:
        status = run(spec, _settings(args) if args.broker else None, workers=args.workers,
                     progress=not args.no_progress, log_dir=log_dir, on_submit=submitted, on_stopping=stopping)
    except RunInterrupted as stopped:
        _print_interrupted(stopped, args.job, log_dir)
        return stopped.exit_code
    except BaseException:
        if log_dir and seen:  # the workers had a job: their logs may say why it went wrong
            _print_logs(log_dir)
        elif log_dir:
            shutil.rmtree(log_dir, ignore_errors=True)
        raise
    if not (seen and seen[0].already_complete and status.state == "complete"):
        _print_summary(status)
    if status.state == "complete":
        if log_dir:
            shutil.rmtree(log_dir, ignore_errors=True)
        return 0
    if log_dir:
        _print_logs(log_dir)
    return EXIT_FAILED_SHARDS


def _print_interrupted(stopped: Any, job_file: str, log_dir: str | None) -> None:
    status = stopped.status
    if not stopped.embedded:
        print("stopped watching; the job goes on on the broker's workers. Follow it with "
              f"`batchformers status {status.job_id if status else job_file} --watch`", file=sys.stderr)
        return
    if status is None:
        print("stopped before the job was submitted; nothing was written.", file=sys.stderr)
    else:
        print(f"job {status.job_id}: interrupted; the workers and the embedded Redis are stopped, no process is "
              f"left.\n  {status.committed} of {status.shards} shards committed ({status.rows_done:,} of "
              f"{status.rows:,} rows) and kept in {status.output}\n  resume: batchformers run {job_file} "
              "(committed shards are skipped)", file=sys.stderr)
    if log_dir:
        print(f"  worker logs: {log_dir}", file=sys.stderr)


def _print_logs(log_dir: str) -> None:
    print(f"worker logs: {log_dir}", file=sys.stderr)


def _print_warnings(submission: Any) -> None:
    for warning in submission.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _demo(args: argparse.Namespace) -> int:
    from producer.demo import main as demo_main
    from producer.run import RunInterrupted

    try:
        return demo_main(args.workdir, args.workers)
    except RunInterrupted as stopped:
        print(f"demo interrupted by {signal.Signals(stopped.signum).name}; its workers and Redis are stopped",
              file=sys.stderr)
        return stopped.exit_code


def _submit(args: argparse.Namespace) -> int:
    from jobs.spec import load_spec
    from producer.api import submit

    spec = load_spec(args.job, output=args.output)
    submission = submit(spec, _settings(args))
    _print_warnings(submission)
    print(submission.job_id)
    if submission.already_complete:
        print(f"0 of {submission.shards} shards enqueued: the job is already complete (every shard was committed "
              f"before) -> {submission.output}", file=sys.stderr)
    else:
        print(f"{submission.enqueued} of {submission.shards} shards enqueued ({submission.rows} rows) -> "
              f"{submission.output}", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    from producer.api import status
    from producer.status import follow, render, watch

    settings = _settings(args)
    if args.watch and args.json:  # one JSON object per line, per refresh
        for current in follow(args.job, settings, interval=args.interval):
            print(json.dumps(current.to_dict(), default=str), flush=True)
        return 0
    if args.watch:
        final = watch(args.job, settings, interval=args.interval)
        print(report_hint(final.output))
        return 0
    current = status(args.job, settings)
    if args.json:
        return _print_json(current.to_dict())
    from rich.console import Console

    Console().print(render(current))
    return 0


def _flower(args: argparse.Namespace) -> int:
    from producer.flower import exec_flower

    exec_flower(_settings(args), port=args.port, address=args.address, basic_auth=args.basic_auth,
                extra=args.flower_args)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from producer.api import inspect_output
    from producer.inspect import render

    described = inspect_output(args.output, _settings(args), rows=args.rows)
    if args.json:
        return _print_json(described.to_dict())
    Console().print(render(described))
    return 0


def _search(args: argparse.Namespace) -> int:
    from producer.api import search

    hits = search(args.output, args.query, _settings(args), top_k=args.top_k, where=args.where, method=args.method)
    for row in hits.to_pylist():
        print(json.dumps(row, default=str) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def _worker(args: argparse.Namespace) -> int:
    # The one import of worker/ from the producer: this command *starts* a worker in this process.
    # It stays lazy, so every other command loads no worker code (tests/test_layering.py allows only it).
    from worker.__main__ import main as worker_main

    worker_main(args.worker_args, prog="batchformers worker")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from producer.api import cancel

    cancel(args.job, _settings(args))
    print(f"cancelled {args.job}: running shards finish, no new shard starts; submitting the job again resumes it")
    return 0


def _retry(args: argparse.Namespace) -> int:
    from producer.api import retry

    retried = retry(args.job, _settings(args))
    print(f"re-enqueued {len(retried.shards)} failed shard(s) of {retried.job_id}")
    return 0


def _compact(args: argparse.Namespace) -> int:
    from producer.compact import compact

    done = compact(args.output, target_bytes=int(args.target_mb * 2**20), log=lambda m: print(m, file=sys.stderr))
    print(f"{done.output}: {done.parts_before} parts -> {done.parts_after} ({done.rows:,} rows, {done.seconds:.1f}s)")
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from producer.api import jobs
    from producer.jobs_view import render

    lines = jobs(_settings(args), limit=args.limit)
    if args.json:
        return _print_json([line.to_dict() for line in lines])
    from rich.console import Console

    Console(width=max(160, Console().width)).print(render(lines))
    return 0


def _report(args: argparse.Namespace) -> int:
    from producer.api import report

    written = report(args.output, _settings(args), out=args.out, png_dir=args.png)
    totals = written.data.totals()
    print(f"{written.path}: {totals['committed']} of {totals['shards']} shards, {totals['workers']} worker(s)")
    for png in written.pngs:
        print(png)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from jobs.spec import load_spec
    from producer.api import plan
    from producer.preflight import render

    found = plan(load_spec(args.job), _settings(args), sample=args.sample, model_rows=args.model_rows,
                 workers=args.workers, run_model=not args.no_model)
    if args.json:
        return _print_json(found.to_dict())
    print(render(found))
    return 0


def report_hint(output: str) -> str:
    return f"report: batchformers report {output}"


def _print_summary(status: Any) -> None:
    from producer.status import truncated_note

    rate = f"{status.rows_per_second:,.1f} rows/s" if status.rows_per_second else "-"
    print(f"job {status.job_id}: {status.state.upper() if status.state != 'complete' else status.state}")
    if status.note:
        print(f"  {status.note}")
    print(f"  shards: {status.committed} committed, {status.failed} failed, {status.pending} pending "
          f"(of {status.shards})")
    print(f"  rows:   {status.rows_done:,} of {status.rows:,} done, {rate}")
    if status.row_errors:
        share = status.row_errors / max(status.rows_done, 1)
        print(f"  ERRORS: {status.row_errors:,} rows ({share:.0%}) have an error (the error column says why)")
    else:
        print("  errors: none")
    for error in status.first_errors:
        print(f"    {error[:200]}")
    if status.truncated:
        print(f"  truncated: {truncated_note(status)}")
    if status.eta_seconds:
        print(f"  eta:    {status.eta_seconds:,.0f}s")
    for shard, error in sorted(status.failures.items()):
        print(f"  shard {shard} failed: {error}")
    print(f"  output: {status.output}")
    print(f"  {report_hint(status.output)}")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _print_json(payload: Any) -> int:
    print(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
