"""``python -m worker`` / ``batchformers worker``: a worker with defaults for one GPU.

One process runs one model at a time (``BATCHFORMERS_MODEL_SLOTS`` keeps more loaded): ``--concurrency 1`` (a prefork child, so a crashed
child is replaced and its shard redelivered). Run one worker per GPU, pinned with
``CUDA_VISIBLE_DEVICES``. Options not listed in ``--help`` go to ``celery worker``.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs.settings import Settings

DEFAULT_ARGS = ["--without-gossip", "--without-mingle", "--events"]


def parser(prog: str = "batchformers worker") -> argparse.ArgumentParser:
    described = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,  # a prefix of one of these may be a celery option
        description="Start a batchformers worker: it takes shards from the queue, runs them through one model "
        "and commits their Parquet parts. Settings come from BATCHFORMERS_* environment variables (see the README); "
        "the options below override them.",
        epilog="Any other option is passed on to celery worker (celery worker --help lists them).",
    )
    described.add_argument("--broker", help="broker URL (redis://[:PASSWORD@]HOST:PORT/DB); default: "
                           "BATCHFORMERS_BROKER_URL, else redis://localhost:6379/0. A password is safer in "
                           "the environment, which ps does not show")
    described.add_argument("-Q", "--queues", help="queue to take shards from; default: BATCHFORMERS_QUEUE "
                           "(batchformers)")
    described.add_argument("--models", help="comma-separated models (hub ids or paths, as job specs name them) "
                           "this worker serves; default: BATCHFORMERS_MODELS, else every model")
    described.add_argument("-n", "--hostname", help="worker name, e.g. gpu0@%%h (%%h: this machine's name)")
    described.add_argument("-c", "--concurrency", type=int, default=1,
                           help="processes, each loading its own model (default 1: one per GPU)")
    described.add_argument("-l", "--loglevel", default="INFO", help="DEBUG, INFO (default), WARNING or ERROR")
    described.add_argument("-P", "--pool", default="prefork", help="Celery pool (default prefork)")
    return described


def main(argv: list[str] | None = None, prog: str = "batchformers worker") -> None:
    args, celery_args = parser(prog).parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.broker:  # the shard tasks read Settings() too, so the environment is where it goes
        os.environ["BATCHFORMERS_BROKER_URL"] = args.broker
    if args.queues:
        os.environ["BATCHFORMERS_QUEUE"] = args.queues
    if args.models:
        os.environ["BATCHFORMERS_MODELS"] = args.models
    settings = Settings()

    from worker.app import app, configure, quiet_progress_bars

    quiet_progress_bars()
    configure(app, settings)
    options = ["--pool", args.pool, "--concurrency", str(args.concurrency), "--loglevel", args.loglevel,
               "--queues", settings.queue, *DEFAULT_ARGS]
    if args.hostname:
        options += ["--hostname", args.hostname]
    app.worker_main(["worker", *options, *celery_args])


if __name__ == "__main__":
    main(prog="python -m worker")
