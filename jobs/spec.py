"""The job spec: what to run, on which input, where to write, with which model.

Loaded from YAML or JSON and validated here; checks that need the input data
(columns present, dataset not empty) are made by the producer at submit time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from jobs.engine.base import LoadOptions, RunOptions, TaskType
from jobs.engine.batching import DEFAULT_BATCH_SIZE
from jobs.errors import SpecError
from jobs.protocol import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from jobs.tasks.registry import TASKS, get_task_class, task_name

DEFAULT_SHARD_ROWS = 10_000
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_ERROR_RATE = 0.5
# Fields that do not change a job's output: changing them resumes the job instead of making a new one.
NOT_FINGERPRINTED = {"max_retries", "shard_time_limit", "max_error_rate", "allow_untrained_head", "priority"}
ID_ROLE = "id"

InputFormat = Literal["auto", "parquet", "arrow", "datasets", "jsonl", "csv"]


class DatasetOptions(BaseModel):
    """``datasets.load_dataset`` arguments, for inputs read through it (hub datasets, JSON Lines, CSV)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: str | None = Field(None, description="Dataset configuration (load_dataset's `name`).")
    split: str = Field("train", description="Split to read; slices work too (`test`, `train[:1000]`).")
    revision: str | None = Field(None, description="Dataset revision on the hub (branch, tag or commit).")


class JobSpec(BaseModel):
    """A batch job. Field names are the YAML keys users write."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(description=f"Task type: one of {', '.join(TASKS)}.")
    model: str | None = Field(None, description="Hub id or local directory; the task's default when omitted.")
    revision: str | None = Field(None, description="Model revision (branch, tag or commit) on the hub.")
    input: str = Field(
        description="Parquet file/directory/glob, Arrow IPC file, `datasets` save_to_disk directory, JSON Lines "
        "or CSV file/glob, or a hub dataset `hf://datasets/NAME` (read with datasets.load_dataset). Local path "
        "or any fsspec URL (s3://, gs://, ...)."
    )
    input_format: InputFormat = Field("auto", description="Input format; guessed from the path when `auto`.")
    dataset: DatasetOptions | None = Field(
        None, description="Config, split and revision for inputs read with datasets.load_dataset."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Task input roles (text, question, context) and `id` mapped to input column names; "
        "a role left out reads the column of the same name.",
    )
    passthrough: list[str] = Field(default_factory=list, description="More input columns copied to the output.")
    output: str = Field(description="Output directory for the Parquet parts and the manifest.")
    params: dict[str, Any] = Field(default_factory=dict, description="Task parameters, named as in transformers pipelines.")
    shard_rows: int = Field(DEFAULT_SHARD_ROWS, gt=0, description="Rows per shard (one Celery task each).")
    batch_size: int = Field(
        DEFAULT_BATCH_SIZE, gt=0,
        description="Model items per batch: chunks for ner and qa (a long text or context gives several), "
        "rows for the other tasks.",
    )
    max_batch_tokens: int | None = Field(
        None, gt=0, description="Optional padded-token budget per batch; long rows then share a batch with fewer rows."
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = Field(
        "auto", description="Model weights dtype; int8 with engine ctranslate2 (CPU and GPU) or onnxruntime (CPU)."
    )
    engine: Literal["transformers", "ctranslate2", "onnxruntime"] = Field(
        "transformers", description="What runs the model: transformers (PyTorch, 4.57's outputs), ctranslate2 "
        "(summarization and translation) or onnxruntime (ner, qa, classification, zero_shot, fill_mask, "
        "embeddings); both faster, outputs measured against 4.57 in the README."
    )
    trust_remote_code: bool = Field(False, description="Run model code from the hub (the worker must allow it too).")
    max_retries: int = Field(DEFAULT_MAX_RETRIES, ge=0, description="Retries of a failing shard (it runs at most 1 + max_retries times) before it is marked failed.")
    shard_time_limit: float | None = Field(
        None, gt=0, description="Seconds a shard may run before it is stopped and retried; default from settings."
    )
    max_error_rate: float = Field(
        DEFAULT_MAX_ERROR_RATE, ge=0, le=1,
        description="Fraction of rows that may end with an error; above it the finished job counts as failed "
        "(1 never fails a job for its row errors).",
    )
    priority: int = Field(
        DEFAULT_PRIORITY, description=f"{MIN_PRIORITY}-{MAX_PRIORITY}, higher first: a worker that frees up takes "
        "the next shard of the highest-priority job waiting; jobs of equal priority share the workers.",
        json_schema_extra={"minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY},
    )
    allow_untrained_head: bool = Field(
        False, description="Run a model whose task head is not in its checkpoint (it would be newly "
        "initialised, so its output is random); refused at submit unless true.",
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        return task_name(value)  # pipeline aliases (text-classification ...) are stored under our name

    @field_validator("priority")
    @classmethod
    def _priority_in_range(cls, value: int) -> int:
        if not MIN_PRIORITY <= value <= MAX_PRIORITY:
            raise ValueError(f"priority must be {MIN_PRIORITY}-{MAX_PRIORITY} (higher runs first; default "
                             f"{DEFAULT_PRIORITY}), not {value}")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset_options_apply(cls, value: DatasetOptions | None, info: ValidationInfo) -> DatasetOptions | None:
        from jobs.io.sources import datasets_loader

        location = info.data.get("input")
        if value is not None and location and datasets_loader(location, info.data.get("input_format", "auto")) is None:
            raise ValueError(
                "applies only to inputs read with datasets.load_dataset: a hub dataset `hf://datasets/NAME` "
                "or JSON Lines/CSV files"
            )
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")

    @field_validator("columns")
    @classmethod
    def _roles_known(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        task = info.data.get("task")
        if task is None:
            return value
        task_class = get_task_class(task)
        roles = set(task_class.input_roles) | set(task_class.optional_roles) | {ID_ROLE}
        unknown = sorted(set(value) - roles)
        if unknown:
            raise ValueError(
                f"unknown role(s) {', '.join(unknown)} for task {task}; "
                f"valid roles: {', '.join(sorted(roles))} (use `passthrough` to copy other columns)"
            )
        return value

    @model_validator(mode="after")
    def _engine_fits(self) -> JobSpec:
        get_task_class(self.task).check_engine(self.engine, self.dtype, self.params)
        return self

    # -- derived views -------------------------------------------------------

    def task_type(self) -> TaskType:
        """The validated task object; raises SpecError naming the bad parameter."""
        cls = get_task_class(self.task)
        try:
            task = cls.from_params(self.params)
        except ValidationError as exc:
            raise SpecError(_params_field(exc), _first_message(exc)) from None
        except (ValueError, TypeError) as exc:
            raise SpecError("params", str(exc)) from None
        if cls.bind_model is not TaskType.bind_model:  # only tasks whose schema depends on the model
            task.bind_model(self.load_options())
        return task

    def input_columns(self) -> dict[str, str]:
        """Role -> input column for every role the task reads."""
        cls = get_task_class(self.task)
        roles = cls.input_roles + tuple(role for role in cls.optional_roles if role in self.columns)
        return {role: self.columns.get(role, role) for role in roles}

    def id_column(self) -> str | None:
        return self.columns.get(ID_ROLE)

    def kept_columns(self) -> list[str]:
        """Input columns copied to the output: the id column then `passthrough`."""
        kept = [self.columns[ID_ROLE]] if ID_ROLE in self.columns else []
        return kept + [c for c in self.passthrough if c not in kept]

    def resolved_model(self) -> str:
        if self.model:
            return self.model
        model = get_task_class(self.task).default_model_for(self.params)
        if not model:
            raise SpecError("model", f"task {self.task} has no default model: set `model`")
        return str(model)

    def load_options(self) -> LoadOptions:
        return LoadOptions(
            model=self.resolved_model(),
            revision=self.revision,
            device=self.device,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            engine=self.engine,
        )

    def run_options(self, overlap: bool = True) -> RunOptions:
        """How batches are formed; never part of what a worker caches a model by."""
        return RunOptions(batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens, overlap=overlap)

    def fingerprint(self) -> str:
        """Stable hash of what determines the output: a re-run with the same spec resumes."""
        payload = self.model_dump(mode="json", exclude=NOT_FINGERPRINTED)
        if payload.get("engine") == "transformers":
            del payload["engine"]  # the default: jobs submitted before the field existed keep their fingerprint
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_spec(source: str | Path | dict[str, Any], **overrides: Any) -> JobSpec:
    """Read a spec from a YAML/JSON file or a dict; every problem is a SpecError."""
    if isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError("spec", f"cannot read job file {path}: {exc.strerror}") from None
        try:
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise SpecError("spec", f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
        if not isinstance(raw, dict):
            raise SpecError("spec", f"{path} must hold a mapping of fields (task, model, input, ...)")
        raw = _resolve_relative_paths(raw, path.parent)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        spec = JobSpec(**raw)
    except ValidationError as exc:
        raise SpecError(_field_name(exc), _first_message(exc)) from None
    spec.task_type()  # validates params now, not on a worker
    return spec


def spec_json_schema() -> dict[str, Any]:
    """The published JSON Schema of the job spec."""
    return JobSpec.model_json_schema()


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Local `input`/`output` paths in a job file are relative to that file."""
    resolved = dict(raw)
    for key in ("input", "output"):
        value = resolved.get(key)
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            resolved[key] = str((base / value).resolve()) if not value.startswith("~") else value
    model = resolved.get("model")
    if isinstance(model, str) and model.startswith((".", "/")) and "://" not in model:
        resolved["model"] = str((base / model).resolve())
    return resolved


def _field_name(exc: ValidationError) -> str:
    loc = exc.errors()[0]["loc"]
    return ".".join(str(part) for part in loc) or "spec"


def _params_field(exc: ValidationError) -> str:
    loc = exc.errors()[0]["loc"]
    return ".".join(["params", *(str(part) for part in loc)])


def _first_message(exc: ValidationError) -> str:
    error = exc.errors()[0]
    if error["type"] == "extra_forbidden":
        return "unknown field; check the spelling against the documented fields"
    if error["type"] == "missing":
        return "this field is required"
    message: str = error["msg"]
    return message.removeprefix("Value error, ")
