"""The operator's caps on what one submit may ask for (``BATCHFORMERS_CAP_*``, :class:`jobs.settings.Settings`).

A spec may be valid and still cost the cluster too much: a ``num_beams`` of 500, a day-long
``shard_time_limit``, or ``shard_rows: 1`` over millions of rows, which makes as many messages
in a Redis that cannot evict them. Each cap is checked once the plan is known and before the
manifest is written or a message sent; the refusal names the field, the cap and its setting.
"""

from __future__ import annotations

from typing import Any

from jobs.errors import SpecError
from jobs.manifest import Manifest
from jobs.settings import ENV_PREFIX, Settings
from jobs.spec import JobSpec

PARAM_CAPS = ("max_new_tokens", "num_beams", "num_return_sequences")


def check_caps(spec: JobSpec, manifest: Manifest, settings: Settings) -> None:
    """SpecError for the first value of ``spec`` (or of its plan) above the operator's cap."""
    wanted: list[tuple[str, str, Any]] = [(f"params.{name}", name, spec.params.get(name)) for name in PARAM_CAPS]
    wanted += [("max_retries", "max_retries", spec.max_retries),
               ("shard_time_limit", "shard_time_limit", spec.shard_time_limit),
               ("priority", "priority", spec.priority)]
    for field, cap, value in wanted:
        _check(field, value, cap, settings)
    shards = len(manifest.shards)
    if shards > settings.cap_shards:
        raise SpecError("shard_rows", f"{manifest.total_rows:,} rows in shards of {spec.shard_rows:,} make "
                        f"{shards:,} shards, more than the {settings.cap_shards:,} a job may have "
                        f"({_setting('shards')}); raise shard_rows, or ask the operator to raise the cap")


def _check(field: str, value: Any, cap: str, settings: Settings) -> None:
    limit = getattr(settings, f"cap_{cap}")
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= limit:
        return  # a value of the wrong type is the task's parameters' to refuse
    raise SpecError(field, f"{value:g} is more than the {limit:g} this deployment allows ({_setting(cap)}); "
                    "use a smaller value, or ask the operator to raise the cap")


def _setting(cap: str) -> str:
    return f"{ENV_PREFIX}CAP_{cap.upper()}"
