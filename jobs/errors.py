"""The batchformers error tree.

    BatchformersError
    ├── SpecError              - the job spec is invalid (names the field and what to do)
    ├── InputError             - the input cannot be read, or changed since submit
    ├── OutputError            - the output location is unusable or holds another job
    ├── ModelLoadError         - the model or tokenizer cannot be loaded
    ├── ShardError             - a shard failed permanently (after its retries)
    └── RetryableError         - a transient fault: the shard may run again
        └── BrokerUnavailable  - the broker cannot be reached

Row-level problems (a null text, an invalid QA pair) are never exceptions: they
become the row's ``error`` column.
"""

from __future__ import annotations


class BatchformersError(Exception):
    """Base class of every error batchformers raises on purpose."""


class SpecError(BatchformersError):
    """Raised when a job spec is invalid; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class InputError(BatchformersError):
    """Raised when input data cannot be read or no longer matches the manifest."""


class OutputError(BatchformersError):
    """Raised when the output location is unusable or belongs to another job."""


class ModelLoadError(BatchformersError):
    """Raised when a model or tokenizer cannot be loaded."""


class ShardError(BatchformersError):
    """Raised when a shard fails for a reason that retrying will not fix."""


class RetryableError(BatchformersError):
    """Raised for transient faults after which the shard may run again."""


class BrokerUnavailable(RetryableError):
    """Raised when the broker cannot be reached."""
