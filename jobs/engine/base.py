"""The interface every task type implements.

A task type is one module in ``jobs/`` exporting one :class:`TaskType` subclass,
registered by name in :mod:`jobs.tasks.registry`. The producer uses the cheap class-level
parts (input roles, params model, output schema) at submit time; the worker calls
:meth:`TaskType.load` once per process and then :meth:`Runner.run_table` per shard.
Runners are built on :mod:`jobs.engine.staged`; :mod:`jobs.engine.execution` owns batching,
overlap, order and the ``error`` column.
Torch and transformers are imported only inside ``load`` so that submitting a job
or reading its status never pays for them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict

from jobs.engine.batching import DEFAULT_BATCH_SIZE
from jobs.errors import SpecError

if TYPE_CHECKING:
    import pyarrow as pa

ProgressCallback = Callable[[int], None]
"""Called with the number of rows just finished, so workers can report progress."""
ERROR = "error"
"""The column every runner's table ends with: None, or why that row has no result."""


def with_error(columns: pa.Schema) -> pa.Schema:
    """A task's output ``columns`` followed by the ``error`` column, as :meth:`Runner.run_table` returns them."""
    import pyarrow as pa  # here, not at the top: submit and status import this module without pyarrow

    return columns.append(pa.field(ERROR, pa.string()))


class TaskParams(BaseModel):
    """Base of every task's ``params`` model: unknown parameters are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _one_as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _split_commas(value: Any) -> Any:
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


class GenerationOverrides(TaskParams):
    """Params whose generation fields, where the job set them, go to ``generate``; the rest follow the model."""

    generation_fields: ClassVar[tuple[str, ...]] = ()

    def overrides(self) -> dict[str, Any]:
        """The generation fields that differ from their declared default, as keyword arguments."""
        fields = type(self).model_fields
        return {name: getattr(self, name) for name in self.generation_fields
                if getattr(self, name) != fields[name].default}


StringList = Annotated[list[str], BeforeValidator(_one_as_list)]
"""A list of strings that also takes one string, as the pipelines' ``targets`` did."""
CommaList = Annotated[list[str], BeforeValidator(_split_commas)]
"""A list of strings that also takes one comma-separated string, as the pipelines' ``candidate_labels`` did."""


@dataclass(frozen=True)
class LoadOptions:
    """How a worker should load a model; resolved from the job spec and settings.

    How batches are formed (:class:`RunOptions`) is not part of it, so a job that
    only changes ``batch_size`` reuses a loaded model."""

    model: str
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    engine: str = "transformers"
    """What runs the model: ``transformers`` (PyTorch), ``ctranslate2`` (seq2seq) or ``onnxruntime`` (encoders)."""


@dataclass(frozen=True)
class ModelRequirement:
    """What a task needs of its model, checked at submit from the config alone (``producer.model_check``)."""

    kind: str  # as a message says it: "a token-classification model"
    mapping: str | None = None  # transformers' MODEL_FOR_..._MAPPING_NAMES: model type -> the class the task loads
    head_weights: tuple[str, ...] = ()  # weight-name parts of that class's task head ("classifier")
    encoder_decoder: bool = False
    needs_labels: bool = False  # the output names the config's labels (id2label)
    needs_config: bool = True  # False: a tokenizer alone will do


@dataclass(frozen=True)
class RunOptions:
    """How a loaded model is run; changing these never reloads the model."""

    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_tokens: int | None = None
    overlap: bool = True
    encode_rows: int | None = None
    """Rows per ``encode`` call; None: the runner's own (``StagedRunner.encode_rows``)."""


@dataclass
class RunStats:
    """What one run fed the model: batches, items, real tokens, padded tokens (items x longest) and the seconds
    each stage spent (with overlap on they run at once, so they add up to more than the run's wall time)."""

    batches: int = 0
    items: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    forward_seconds: float = 0.0
    encode_seconds: float = 0.0
    """Tokenizing (``encode``) and padding batches into tensors (``collate``)."""
    decode_seconds: float = 0.0
    pad_seconds: float = 0.0

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage, as a shard's marker records them: encode (tokenize and pad), forward, decode."""
        return {"encode": round(self.encode_seconds + self.pad_seconds, 4), "forward": round(self.forward_seconds, 4),
                "decode": round(self.decode_seconds, 4)}


class RunResult(NamedTuple):
    """What :meth:`Runner.run_table` gives back: the rows' table and what the run fed the model."""

    table: pa.Table
    stats: RunStats


SERVED_BY: dict[str, tuple[str, ...]] = {
    "ctranslate2": ("summarization", "translation"),
    "onnxruntime": ("ner", "qa", "classification", "zero_shot", "fill_mask", "embeddings"),
}
"""The tasks each optional engine runs, as a refusal names them (a test checks them against ``engines``)."""


class Runner(ABC):
    """A loaded model ready to process rows. Built once per worker process."""

    wants_row_index: ClassVar[bool] = False
    """True: ``inputs`` also carries each row's index in the whole input (per-row seeds that do not
    depend on the sharding, as text generation's sampling needs)."""
    options: RunOptions = RunOptions()
    """How :meth:`run_table` runs when it is given no options."""

    @abstractmethod
    def run_table(self, inputs: dict[str, list[Any]], progress: ProgressCallback | None = None,
                  options: RunOptions | None = None) -> RunResult:
        """The task's output columns plus ``error`` (None on success), one row per input row, in order.

        ``inputs`` maps each input role (``text``, ``question`` ...) to its column; ``options``
        None: the runner's own. A bad row must become an ``error``, never an exception.
        """

    def using(self, options: RunOptions) -> Runner:
        """This runner with other default run options; the model is shared."""
        self.options = options
        return self

    def run(self, inputs: dict[str, list[Any]], progress: ProgressCallback | None = None,
            options: RunOptions | None = None) -> list[dict[str, Any]]:
        """:meth:`run_table`'s table as one dict per row (tests and small jobs)."""
        rows: list[dict[str, Any]] = self.run_table(inputs, progress, options).table.to_pylist()
        return rows


class TaskType(ABC):
    """What a task is: its inputs, parameters, output schema and how to load it."""

    name: ClassVar[str]
    input_roles: ClassVar[tuple[str, ...]] = ("text",)
    optional_roles: ClassVar[tuple[str, ...]] = ()
    """Roles read only when the spec maps them in ``columns`` (classification's ``text_pair``)."""
    Params: ClassVar[type[TaskParams]]
    default_model: ClassVar[str | None] = None
    engines: ClassVar[Collection[str]] = ("transformers",)
    """The spec's ``engine`` values this task runs on (a task with several maps each to its runner)."""
    model_requirement: ClassVar[ModelRequirement | None] = None
    """What the model must be; None: not checked at submit."""

    def __init__(self, params: TaskParams) -> None:
        self.params = params

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TaskType:
        """Validate raw ``params`` from a spec (raises pydantic.ValidationError)."""
        return cls(cls.Params(**params))

    @classmethod
    def default_model_for(cls, params: dict[str, Any]) -> str | None:
        """The model used when the spec names none (translation derives it from languages)."""
        return cls.default_model

    @classmethod
    def check_engine(cls, engine: str, dtype: str, params: dict[str, Any]) -> None:
        """Refuse at submit an engine, or an engine's dtype or parameters, this task cannot run (SpecError)."""
        if engine not in cls.engines:
            served = SERVED_BY.get(engine)
            runs = f" (it runs {', '.join(served)})" if served else ""
            raise SpecError("engine", f"engine {engine} does not run task {cls.name}{runs}; valid for "
                                      f"{cls.name}: {', '.join(cls.engines)}")
        if dtype == "int8":
            quantizing = [name for name in cls.engines if name != "transformers"]
            raise SpecError("dtype", f"int8 needs engine: {' or '.join(quantizing)}" if quantizing
                            else f"task {cls.name} has no engine that runs int8")

    def bind_model(self, options: LoadOptions) -> None:
        """Read what the output schema needs from the model's config, at submit time and on workers
        (embeddings: the vector width). Most tasks need nothing."""
        del options

    @abstractmethod
    def output_schema(self) -> pa.Schema:
        """Arrow schema of the result columns (without pass-through and ``error``)."""

    @abstractmethod
    def load(self, options: LoadOptions) -> Runner:
        """Load model and tokenizer; called once per worker process."""
