"""The batchformers command line: each command calls the public API (:mod:`producer.api`) and prints.

The parser (:mod:`producer.cli_parser`) is built from the standard library alone and each command
imports what it needs in its handler, so ``--help``, ``--version`` and the commands that only read (``status``, ``jobs``,
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
from producer.cli_parser import Handler, build_parser, parse

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
    if args.keep_warm is not None and args.keep_warm < 0:
        raise BatchformersError(f"--keep-warm must be 0 or more seconds (got {args.keep_warm:g})")
    warm_logs = _warm_logs(args) if embedded else None
    log_dir = warm_logs or (tempfile.mkdtemp(prefix="batchformers-run-") if embedded else None)

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
                     progress=not args.no_progress, log_dir=log_dir, on_submit=submitted, on_stopping=stopping,
                     keep_warm=args.keep_warm)
    except RunInterrupted as stopped:
        _print_interrupted(stopped, args.job, log_dir)
        return stopped.exit_code
    except BaseException:
        if log_dir and seen:  # the workers had a job: their logs may say why it went wrong
            _print_logs(log_dir)
        elif log_dir and not warm_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        raise
    if not (seen and seen[0].already_complete and status.state == "complete"):
        from producer.status_render import summary

        print(summary(status))
    if status.state == "complete":
        if log_dir and not warm_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        return 0
    if log_dir:
        _print_logs(log_dir)
    return EXIT_FAILED_SHARDS


def _warm_logs(args: argparse.Namespace) -> str | None:
    """The warm pool's log folder when this run uses one (kept: the pool writes there for later runs too)."""
    from jobs.settings import Settings

    keep_warm = args.keep_warm if args.keep_warm is not None else Settings().keep_warm_seconds
    if keep_warm <= 0:
        return None
    from producer.warm_pool import log_directory

    return str(log_directory(args.workers))


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
    from producer.api import follow, status
    from producer.status_render import live, render, report_hint

    settings = _settings(args)
    if args.watch and args.json:  # one JSON object per line, per refresh
        for current in follow(args.job, settings, interval=args.interval):
            print(json.dumps(current.to_dict(), default=str), flush=True)
        return 0
    if args.watch:
        final = live(follow(args.job, settings, interval=args.interval))
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
    from producer.api import compact

    done = compact(args.output, _settings(args), target_mb=args.target_mb, log=lambda m: print(m, file=sys.stderr))
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


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _print_json(payload: Any) -> int:
    print(json.dumps(payload, indent=2, default=str))
    return 0


HANDLERS: dict[str, Handler] = {
    "run": _run, "submit": _submit, "status": _status, "worker": _worker, "cancel": _cancel, "retry": _retry,
    "demo": _demo, "flower": _flower, "inspect": _inspect, "compact": _compact, "jobs": _jobs, "search": _search,
    "report": _report, "plan": _plan, "schema": _schema,
}


def _parser() -> argparse.ArgumentParser:
    return build_parser(HANDLERS)


if __name__ == "__main__":
    sys.exit(main())
