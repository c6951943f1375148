"""The command line's parser: every command and option, from the standard library alone.

Building it imports nothing else, so ``--help`` and ``--version`` stay instant
(``tests/producer/test_light_imports.py``); each command's handler is given by :mod:`producer.cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse; ``worker`` and ``flower`` pass options they do not know on to the worker / Flower."""
    args, unknown = parser.parse_known_args(argv)
    passthrough = getattr(args, "passthrough", None)
    if unknown and passthrough is None:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if passthrough is not None:
        setattr(args, passthrough, [*unknown, *getattr(args, passthrough)])
    return args


def positive_int(text: str) -> int:
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


def build_parser(handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """Every command and its options; ``handlers`` names the function that runs each command."""
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
    run.add_argument("--workers", type=positive_int, default=1,
                     help="local worker processes, one model each (embedded mode; default 1)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--output", help="write to this output directory instead of the spec's output")
    run.add_argument("--keep-warm", type=float, metavar="SECONDS",
                     help="keep the embedded Redis and workers (models loaded) for the next run until idle this long; "
                     "default BATCHFORMERS_KEEP_WARM_SECONDS, else 0: stop them with the run")
    run.set_defaults(handler=handlers["run"])

    submit = commands.add_parser("submit", help="enqueue a job on the broker and print its id")
    submit.add_argument("job", help="job spec file (YAML or JSON)")
    submit.add_argument("--broker", help=BROKER_HELP)
    submit.add_argument("--output", help="write to this output directory instead of the spec's output")
    submit.set_defaults(handler=handlers["submit"])

    status = commands.add_parser("status", help="show a job's progress")
    status.add_argument("job", help=JOB_HELP)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", action="store_true", help="redraw until the job finishes (Ctrl-C stops)")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between redraws with --watch")
    status.add_argument("--broker", help=BROKER_HELP + " (asked which shards are running)")
    status.set_defaults(handler=handlers["status"])

    worker = commands.add_parser("worker", help="start a worker (defaults for one GPU)", add_help=False)
    worker.set_defaults(handler=handlers["worker"], passthrough="worker_args", worker_args=[])

    cancel = commands.add_parser("cancel", help="stop starting new shards of a job")
    cancel.add_argument("job", help=JOB_HELP)
    cancel.add_argument("--broker", help=BROKER_HELP)
    cancel.set_defaults(handler=handlers["cancel"])

    retry = commands.add_parser("retry", help="re-enqueue only the failed shards of a job")
    retry.add_argument("job", help=JOB_HELP)
    retry.add_argument("--broker", help=BROKER_HELP)
    retry.set_defaults(handler=handlers["retry"])

    demo = commands.add_parser("demo", help="run the example NER job end to end and show its output")
    demo.add_argument("--workdir", default=".demo", help="where the demo writes its model and output")
    demo.add_argument("--workers", type=positive_int, default=1, help="local worker processes (default 1)")
    demo.set_defaults(handler=handlers["demo"])

    flower = commands.add_parser("flower", help="start the Flower dashboard against the broker")
    flower.add_argument("--port", type=int, help="default: BATCHFORMERS_FLOWER_PORT (5555)")
    flower.add_argument("--address", default="127.0.0.1", help="listen address (0.0.0.0 in a container)")
    flower.add_argument("--basic-auth", metavar="USER:PASS",
                        help="ask for a login; default: BATCHFORMERS_FLOWER_BASIC_AUTH")
    flower.add_argument("--broker", help=BROKER_HELP)
    flower.add_argument("flower_args", nargs=argparse.REMAINDER, help="extra Flower options")
    flower.set_defaults(handler=handlers["flower"], passthrough="flower_args")

    inspect = commands.add_parser("inspect", help="show a job output's schema, counts and first rows")
    inspect.add_argument("output", help="output directory or URL (s3://...)")
    inspect.add_argument("--rows", type=int, default=5, help="how many rows to show (default 5)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(handler=handlers["inspect"])

    compact = commands.add_parser("compact", help="merge a finished job's small parts into large ones")
    compact.add_argument("output", help="output directory or URL (s3://...)")
    compact.add_argument("--target-mb", type=float, default=256, help="size of the merged parts (MB)")
    compact.set_defaults(handler=handlers["compact"])

    jobs = commands.add_parser("jobs", help="list the jobs submitted to the broker, newest first",
                               description="Every job the broker knows, newest first: state, priority, pinned "
                               "model, shards done/total, rows/s, ETA. status, cancel and retry take the job ids.")
    jobs.add_argument("--broker", help=BROKER_HELP)
    jobs.add_argument("--limit", type=int, default=50, help="show at most this many jobs (default 50)")
    jobs.add_argument("--json", action="store_true", help="machine-readable output (a list of objects)")
    jobs.set_defaults(handler=handlers["jobs"])
    search = commands.add_parser("search", help="rows of an embeddings job nearest to a query (cosine)")
    search.add_argument("output", help="output directory or URL of an embeddings job")
    search.add_argument("query", help="text to search for")
    search.add_argument("--top-k", type=int, default=10, help="how many rows to return")
    search.add_argument("--where", help="SQL condition on the rows' columns (DuckDB), e.g. \"lang = 'en'\"")
    search.add_argument("--method", default="duckdb", choices=["duckdb", "numpy"], help="scorer")
    search.add_argument("--json", action="store_true", help="one JSON object per row")
    search.set_defaults(handler=handlers["search"])

    report = commands.add_parser("report", help="an HTML page (offline) of a job's shards, workers, time and errors",
                                 description="One self-contained HTML file: shards per worker over time, "
                                 "throughput, where the time went, padding, stragglers, model loads, retries, "
                                 "failures and row errors. Works on a running job (what is committed so far).")
    report.add_argument("output", help="output directory or URL (s3://...)")
    report.add_argument("--out", help="the HTML file to write (default: report-<job id>.html here)")
    report.add_argument("--png", metavar="DIR", help="also write each chart as a PNG into DIR")
    report.set_defaults(handler=handlers["report"])

    plan = commands.add_parser("plan", help="a job's pre-flight: rows, shards, token lengths, bad rows, estimate",
                               description="Read a sample spread over the input and report, without a broker and "
                               "writing nothing: rows and shards, token lengths under the model's tokenizer, rows "
                               "over its limit, invalid and empty rows, duplicates, padding; then time the model on "
                               "part of the sample and estimate worker-seconds and wall time.")
    plan.add_argument("job", help="job spec file (YAML or JSON)")
    plan.add_argument("--sample", type=positive_int, default=4000, help="rows to sample (default 4000)")
    plan.add_argument("--model-rows", type=positive_int, default=256,
                      help="rows of the sample run through the model (default 256)")
    plan.add_argument("--workers", type=positive_int, default=1, help="workers to estimate the wall time for")
    plan.add_argument("--no-model", action="store_true", help="do not run the model (no time estimate)")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(handler=handlers["plan"])

    schema = commands.add_parser("schema", help="print the JSON Schema of job specs")
    schema.set_defaults(handler=handlers["schema"])
    return parser
