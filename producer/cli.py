"""The ``batchformers`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jobs.errors import BatchformersError
from jobs.settings import Settings
from jobs.spec import load_spec, spec_json_schema

EXIT_FAILED_SHARDS = 1
EXIT_USAGE = 2


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
        return 130


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse; ``worker`` and ``flower`` pass options they do not know on to Celery / Flower."""
    args, unknown = parser.parse_known_args(argv)
    passthrough = getattr(args, "passthrough", None)
    if unknown and passthrough is None:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if passthrough is not None:
        setattr(args, passthrough, [*unknown, *getattr(args, passthrough)])
    return args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchformers", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    run = commands.add_parser("run", help="run a job to the end on this machine (or on --broker)")
    run.add_argument("job", help="job spec file (YAML or JSON)")
    run.add_argument("--broker", help="broker URL; default: BATCHFORMERS_BROKER_URL, else an embedded Redis")
    run.add_argument("--workers", type=int, default=1, help="local worker processes (embedded mode)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--output", help="override the spec's output")
    run.set_defaults(handler=_run)

    submit = commands.add_parser("submit", help="enqueue a job on the broker and return its id")
    submit.add_argument("job")
    submit.add_argument("--broker")
    submit.add_argument("--output", help="override the spec's output")
    submit.set_defaults(handler=_submit)

    status = commands.add_parser("status", help="show a job's progress")
    status.add_argument("job", help="job id or output directory")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", action="store_true", help="redraw until the job finishes (Ctrl-C stops)")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch")
    status.add_argument("--broker")
    status.set_defaults(handler=_status)

    worker = commands.add_parser("worker", help="start a worker (defaults for one GPU)")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER, help="extra celery worker arguments")
    worker.set_defaults(handler=_worker, passthrough="celery_args")

    cancel = commands.add_parser("cancel", help="stop starting new shards of a job")
    cancel.add_argument("job")
    cancel.add_argument("--broker")
    cancel.set_defaults(handler=_cancel)

    retry = commands.add_parser("retry", help="re-enqueue only the failed shards of a job")
    retry.add_argument("job")
    retry.add_argument("--broker")
    retry.set_defaults(handler=_retry)

    demo = commands.add_parser("demo", help="run the example NER job end to end and show its output")
    demo.add_argument("--workdir", default=".demo", help="where the demo writes its model and output")
    demo.add_argument("--workers", type=int, default=1)
    demo.set_defaults(handler=_demo)

    flower = commands.add_parser("flower", help="start the Flower dashboard against the broker")
    flower.add_argument("--port", type=int, help="default: BATCHFORMERS_FLOWER_PORT (5555)")
    flower.add_argument("--address", default="127.0.0.1", help="listen address (0.0.0.0 in a container)")
    flower.add_argument("--basic-auth", metavar="USER:PASS",
                        help="ask for a login; default: BATCHFORMERS_FLOWER_BASIC_AUTH")
    flower.add_argument("--broker")
    flower.add_argument("flower_args", nargs=argparse.REMAINDER, help="extra Flower options")
    flower.set_defaults(handler=_flower, passthrough="flower_args")

    inspect = commands.add_parser("inspect", help="show a job output's schema, counts and first rows")
    inspect.add_argument("output", help="output directory or URL (s3://...)")
    inspect.add_argument("--rows", type=int, default=5, help="how many rows to show")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(handler=_inspect)

    search = commands.add_parser("search", help="rows of an embeddings job nearest to a query (cosine)")
    search.add_argument("output", help="output directory or URL of an embeddings job")
    search.add_argument("query", help="text to search for")
    search.add_argument("--top-k", type=int, default=10, help="how many rows to return")
    search.add_argument("--where", help="SQL condition on the rows' columns (DuckDB), e.g. \"lang = 'en'\"")
    search.add_argument("--method", default="duckdb", choices=["duckdb", "numpy"], help="scorer")
    search.add_argument("--json", action="store_true", help="one JSON object per row")
    search.set_defaults(handler=_search)

    schema = commands.add_parser("schema", help="print the JSON Schema of job specs")
    schema.set_defaults(handler=lambda args: _print_json(spec_json_schema()))
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    broker = getattr(args, "broker", None)
    return Settings(broker_url=broker) if broker else Settings()


def _run(args: argparse.Namespace) -> int:
    from producer.run import run

    spec = load_spec(args.job, output=args.output)
    status = run(spec, broker_url=args.broker, workers=args.workers, progress=not args.no_progress)
    _print_summary(status)
    return 0 if status.state == "complete" else EXIT_FAILED_SHARDS


def _demo(args: argparse.Namespace) -> int:
    from producer.demo import main as demo_main

    return demo_main(args.workdir, args.workers)


def _submit(args: argparse.Namespace) -> int:
    from producer.submit import submit

    spec = load_spec(args.job, output=args.output)
    submission = submit(spec, _settings(args))
    print(submission.job_id)
    print(f"{submission.enqueued} of {submission.shards} shards enqueued ({submission.rows} rows) -> "
          f"{submission.output}", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from producer.status import follow, render, status, watch

    settings = _settings(args)
    if args.watch and args.json:  # one JSON object per line, per refresh
        for current in follow(args.job, settings, interval=args.interval):
            print(json.dumps(current.to_dict(), default=str), flush=True)
        return 0
    if args.watch:
        watch(args.job, settings, interval=args.interval)
        return 0
    current = status(args.job, settings)
    if args.json:
        return _print_json(current.to_dict())
    Console().print(render(current))
    return 0


def _flower(args: argparse.Namespace) -> int:
    from producer.flower import exec_flower

    exec_flower(_settings(args), port=args.port, address=args.address, basic_auth=args.basic_auth,
                extra=args.flower_args)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from producer.inspect import describe, render

    described = describe(args.output, rows=args.rows)
    if args.json:
        return _print_json(described.to_dict())
    Console().print(render(described))
    return 0


def _search(args: argparse.Namespace) -> int:
    from producer.search import search

    hits = search(args.output, args.query, top_k=args.top_k, where=args.where, method=args.method)
    for row in hits.to_pylist():
        print(json.dumps(row, default=str) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from worker.__main__ import main as worker_main

    worker_main(args.celery_args)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from jobs.layout import OutputLayout
    from producer.job_index import resolve

    OutputLayout(resolve(_settings(args), args.job)).cancel()
    print(f"cancelled {args.job}: running shards finish, no new shard starts; `batchformers submit` resumes it")
    return 0


def _retry(args: argparse.Namespace) -> int:
    from jobs.layout import OutputLayout
    from producer.job_index import resolve
    from producer.submit import retry_failed

    settings = _settings(args)
    layout = OutputLayout(resolve(settings, args.job))
    messages = retry_failed(layout, settings)
    print(f"re-enqueued {len(messages)} failed shard(s) of {layout.read_manifest().job_id}")
    return 0


def _print_summary(status: Any) -> None:
    rate = f"{status.rows_per_second:,.1f} rows/s" if status.rows_per_second else "-"
    print(f"job {status.job_id}: {status.state}")
    print(f"  shards: {status.committed} committed, {status.failed} failed, {status.pending} pending "
          f"(of {status.shards})")
    print(f"  rows:   {status.rows_done} of {status.rows} done, {status.row_errors} row errors, {rate}")
    if status.eta_seconds:
        print(f"  eta:    {status.eta_seconds:,.0f}s")
    for shard, error in sorted(status.failures.items()):
        print(f"  shard {shard} failed: {error}")
    print(f"  output: {status.output}")


def _print_json(payload: Any) -> int:
    print(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
