"""``batchformers flower``: the Flower dashboard against the configured broker.

Shard tasks show in Flower as ``batchformers.run_shard`` with arguments
``job=<id> shard=<n> rows=<k>``, a column of the task list (:data:`TASKS_COLUMNS`); while a shard runs its result-backend state is
``PROGRESS`` with ``{"done": rows, "total": rows}``; its result is
``{"shard", "job", "rows", "errors", "seconds"}``.

The broker URL and the basic-auth credentials travel to Flower in its
environment, never on its command line, so they do not show in ``ps``. Flower's
HTTP API (``/api/tasks`` ...) needs authentication, or
``FLOWER_UNAUTHENTICATED_API=true`` in the environment when it runs without.

Flower runs with the worker's configuration file (``FLOWER_CONF``, :data:`FLOWER_CONFIG`): its Broker
page lists every live job queue with its messages, and its ``/metrics`` the backlog gauges
(``worker/flower.py``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.util import find_spec

from jobs.errors import BatchformersError
from jobs.settings import Settings

DEFAULT_ADDRESS = "127.0.0.1"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TASKS_COLUMNS = "name,uuid,state,args,received,runtime,worker"  # Flower's default, plus args: job and shard
FLOWER_CONFIG = "worker.flowerconfig"  # a path to Flower, not an import: producer never imports worker


def flower_config_path() -> str:
    spec = find_spec(FLOWER_CONFIG)
    if spec is None or spec.origin is None:
        raise BatchformersError(f"cannot find {FLOWER_CONFIG}: install batchformers with its worker package")
    return spec.origin


def check_basic_auth(value: str) -> str:
    """``user:password`` entries, comma-separated; BatchformersError naming the problem otherwise."""
    entries = [entry for entry in value.split(",") if entry]
    if not entries or any(":" not in entry or entry.startswith(":") for entry in entries):
        raise BatchformersError(
            "Flower basic auth must be `user:password` (several: `alice:pw1,bob:pw2`), "
            "from --basic-auth or BATCHFORMERS_FLOWER_BASIC_AUTH"
        )
    return value


def flower_command(port: int, address: str = DEFAULT_ADDRESS, extra: Sequence[str] = ()) -> list[str]:
    """The command line; broker and credentials go in :func:`flower_environment`."""
    return [sys.executable, "-m", "celery", "--app", "worker.app", "flower", f"--port={port}",
            f"--address={address}", *extra]


def flower_environment(settings: Settings, basic_auth: str | None = None) -> dict[str, str]:
    env = {"FLOWER_CONF": flower_config_path(), "FLOWER_TASKS_COLUMNS": TASKS_COLUMNS,
           **os.environ, "BATCHFORMERS_BROKER_URL": settings.broker_url,
           "BATCHFORMERS_QUEUE": settings.queue}
    if settings.result_backend:
        env["BATCHFORMERS_RESULT_BACKEND"] = settings.result_backend
    credentials = basic_auth or settings.flower_basic_auth
    if credentials:
        env["FLOWER_BASIC_AUTH"] = check_basic_auth(credentials)
    env.pop("BATCHFORMERS_FLOWER_BASIC_AUTH", None)
    return env


def exec_flower(settings: Settings, port: int | None = None, address: str = DEFAULT_ADDRESS,
                basic_auth: str | None = None, extra: Sequence[str] = ()) -> None:
    """Replace this process with Flower (signals then reach Flower directly)."""
    from jobs.broker import safe_url

    env = flower_environment(settings, basic_auth)
    port = port or settings.flower_port
    if "FLOWER_BASIC_AUTH" not in env and address not in LOOPBACK:
        print(f"warning: Flower on {address} without authentication: anyone who reaches port {port} can "
              "see and revoke tasks; set --basic-auth or BATCHFORMERS_FLOWER_BASIC_AUTH", file=sys.stderr)
    print(f"Flower for {safe_url(settings.broker_url)} on http://{address}:{port}", file=sys.stderr, flush=True)
    command = flower_command(port, address, extra)
    os.execve(command[0], command, env)
