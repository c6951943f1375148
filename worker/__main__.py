"""``python -m worker`` / ``batchformers worker``: a worker with defaults for one GPU.

One process runs one model: ``--concurrency 1`` (a prefork child, so a crashed
child is replaced and its shard redelivered). Run one worker per GPU, pinned with
``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import sys

from jobs.settings import Settings

DEFAULT_ARGS = ["--pool", "prefork", "--concurrency", "1", "--without-gossip", "--without-mingle",
                "--events", "--loglevel", "INFO"]


def main(argv: list[str] | None = None) -> None:
    from worker.app import app

    args = list(sys.argv[1:] if argv is None else argv)
    settings = Settings()
    merged = list(DEFAULT_ARGS)
    for flag in ("--concurrency", "--loglevel", "--pool"):
        if flag in args and flag in merged:
            at = merged.index(flag)
            del merged[at : at + 2]
    if "-Q" not in args and "--queues" not in args:
        merged += ["--queues", settings.queue]
    app.worker_main(["worker", *merged, *args])


if __name__ == "__main__":
    main()
