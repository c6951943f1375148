"""Settings of workers and the producer, from ``BATCHFORMERS_*`` environment variables.

A plain pydantic model that reads its variables itself (any case; a value given to the
constructor wins): pydantic-settings, which did this before, cost every command ~50-90 ms of
imports (``batchformers status`` reads one setting, the broker URL).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

ENV_PREFIX = "BATCHFORMERS_"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE = "batchformers"
DEFAULT_SHARD_TIME_LIMIT = 3600.0
DEFAULT_LEASE_SECONDS = 20.0  # a SIGKILLed worker's shard restarts within about 1.25 of it (jobs.recovery)
DEFAULT_FLOWER_PORT = 5555
DEFAULT_METRICS_ADDRESS = "127.0.0.1"  # this machine only, unless the operator says otherwise
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
DEFAULT_MODEL_SLOTS = 1
DEFAULT_PIECE_ROWS = 1024  # rows per run of the runner inside a shard: batching sorts by length within one run
DEFAULT_SPECULATE_AFTER = 60.0  # a shard shorter than this is never copied, however slow for its job
DEFAULT_PIECE_SECONDS = 120.0  # a piece is committed about this often: the most work a lost worker costs
"""Models one worker process keeps loaded, on GPU and CPU alike (see ``model_slots``)."""
CAPS = {  # what one submit may ask for (see `cap_*` below): generous, but finite
    "max_new_tokens": 4096, "num_beams": 16, "num_return_sequences": 16, "max_retries": 10,
    "shard_time_limit": 24 * 3600, "shards": 100_000, "priority": 9,
}
CACHE_SUBDIR = "batchformers"
"""``BATCHFORMERS_CACHE_DIR`` defaults to this directory under ``HF_HOME`` (``~/.cache/huggingface``)."""


class Settings(BaseModel):
    """One place for every knob; names map to ``BATCHFORMERS_<NAME>``."""

    model_config = ConfigDict(extra="ignore", validate_default=True,
                              protected_namespaces=("model_validate", "model_dump"))  # fields model_slots, models

    # repr=False: the URLs may hold a password, and settings objects end up in logs and tracebacks.
    broker_url: str = Field(DEFAULT_BROKER_URL, repr=False, description="Celery broker (redis:// or rediss://).")
    result_backend: str | None = Field(
        None, repr=False, description="Celery result backend; the broker URL when unset."
    )
    queue: str = Field(DEFAULT_QUEUE, description="Queue the shard tasks go to.")
    shard_time_limit: float = Field(
        DEFAULT_SHARD_TIME_LIMIT, gt=0, description="Default hard limit (s) on one shard's run."
    )
    lease_seconds: float = Field(
        DEFAULT_LEASE_SECONDS,
        gt=0,
        description="How long a dead worker's shard waits before another worker takes it over.",
    )
    retention_seconds: float = Field(
        DEFAULT_RETENTION_SECONDS, gt=0,
        description="How long a finished job's broker state (its ledger in Redis) is kept.",
    )
    routing: bool = Field(
        True, description="Producer: one queue per job, with its priority; off: every shard in `queue`, first in, "
        "first out. Worker: take shards of its loaded models first; off: plain round-robin over the queues."
    )
    model_slots: int = Field(
        DEFAULT_MODEL_SLOTS, gt=0,
        description="Models a worker process keeps loaded; the least recently used is evicted. 1 on CPU too: "
        "each worker process holds its own copy in host memory, and routing makes model switches rare.",
    )
    models: str = Field("", description="Comma-separated models (as job specs name them) this worker serves; "
                        "empty serves every model.")
    allow_trust_remote_code: bool = Field(False, description="Let jobs that ask for it run model code "
                                           "(workers, and the producer reading a model).")
    allowed_roots: str = Field("", description="Comma-separated prefixes that inputs, outputs "
                               "and local model directories must lie under; empty allows all.")
    torch_threads: int | None = Field(None, gt=0, description="torch intra-op threads per worker process.")
    overlap: bool = Field(
        True, description="Run host stages (tokenize, pad, decode) in threads beside the device stage; "
        "results are identical either way."
    )
    cache_dir: str | None = Field(
        None, description="Where workers keep derived model files (CTranslate2 conversions); "
        "default HF_HOME/batchformers. Share it between the workers of a machine."
    )
    drain_seconds: float = Field(
        20.0, ge=0, description="Worker, on SIGTERM: how long the running shard may finish before it is given "
        "back (requeued at once, not counted as an attempt); keep it under the platform's stop grace period."
    )
    piece_rows: int = Field(
        DEFAULT_PIECE_ROWS, ge=0, description="Worker: the step inside a shard: a long shard commits its finished "
        "rows in pieces of whole such steps (see `piece_seconds`), and the runner gets as many steps at once as "
        "fit in a piece's time; 0 runs and commits each shard whole."
    )
    piece_seconds: float = Field(
        DEFAULT_PIECE_SECONDS, gt=0, description="Worker: a shard still running after this long commits the rows "
        "it has finished as a piece, so a takeover or a preemption redoes at most this much work."
    )
    speculate: bool = Field(
        True, description="Worker: once a job's queue is empty, an idle worker starts a copy of a shard running "
        "over twice the job's median shard time (and `speculate_after_seconds`); the first to commit wins."
    )
    speculate_after_seconds: float = Field(
        DEFAULT_SPECULATE_AFTER, gt=0, description="Worker: the least time a shard runs before a copy of it starts."
    )
    keep_warm_seconds: float = Field(
        0, ge=0, description="`run` without a broker: keep its Redis and workers (models loaded) for the next "
        "run with the same environment until they have been idle this long; 0 stops them with the run."
    )
    metrics_port: int | None = Field(
        None, gt=0, lt=65536, description="Port a worker serves Prometheus metrics on (/metrics); off when unset."
    )
    metrics_address: str = Field(
        DEFAULT_METRICS_ADDRESS, description="Address the metrics port listens on; 0.0.0.0 for a scraper on "
        "another host or container (compose sets it inside its own network)."
    )
    flower_port: int = Field(DEFAULT_FLOWER_PORT, gt=0, lt=65536, description="Port `batchformers flower` listens on.")
    flower_basic_auth: str | None = Field(
        None, repr=False, description="`user:password` (comma-separated for several) Flower asks for; no login when unset."
    )
    # Caps on what a submitter may ask for; a submit over one is refused before anything is written or enqueued.
    cap_max_new_tokens: int = Field(CAPS["max_new_tokens"], gt=0, description="Highest `params.max_new_tokens`.")
    cap_num_beams: int = Field(CAPS["num_beams"], gt=0, description="Highest `params.num_beams`.")
    cap_num_return_sequences: int = Field(
        CAPS["num_return_sequences"], gt=0, description="Highest `params.num_return_sequences`.")
    cap_max_retries: int = Field(CAPS["max_retries"], ge=0, description="Highest `max_retries`.")
    cap_shard_time_limit: float = Field(
        CAPS["shard_time_limit"], gt=0, description="Highest `shard_time_limit` (s) a spec may set.")
    cap_shards: int = Field(
        CAPS["shards"], gt=0, description="Most shards per job (each is a message of about 1.2 KB on the broker): "
        "raise `shard_rows` for a bigger input.")
    cap_priority: int = Field(CAPS["priority"], ge=0, le=9, description="Highest `priority` a submitter may use.")

    @model_validator(mode="before")
    @classmethod
    def _from_environment(cls, given: Any) -> Any:
        """``BATCHFORMERS_<NAME>`` (in any case) for each field the constructor was not given."""
        if not isinstance(given, dict):
            return given
        found = {key[len(ENV_PREFIX):].lower(): value for key, value in os.environ.items()
                 if key.upper().startswith(ENV_PREFIX)}
        return {**{name: found[name] for name in cls.model_fields if name in found}, **given}

    def backend_url(self) -> str:
        return self.result_backend or self.broker_url

    def resolved_cache_dir(self) -> Path:
        """``cache_dir``, else ``batchformers`` under ``HF_HOME`` (default ``~/.cache/huggingface``)."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        hf_home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
        return Path(hf_home).expanduser() / CACHE_SUBDIR

    def served_models(self) -> frozenset[str]:
        return frozenset(model.strip() for model in self.models.split(",") if model.strip())

    def roots(self) -> list[str]:
        return [root.strip() for root in self.allowed_roots.split(",") if root.strip()]

    def allows(self, location: str) -> bool:
        """True when ``location`` lies under one of the allowed roots (always, when none are set)."""
        from jobs.roots import under

        roots = self.roots()
        return not roots or any(under(location, root) for root in roots)
