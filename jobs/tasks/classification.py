"""Text classification, as ``pipeline("text-classification")`` (alias ``sentiment-analysis``) gives it.

Stages on :mod:`jobs.engine.staged`: ``encode`` tokenizes a block of rows in one call (text pairs
when the spec maps a ``text_pair`` column; texts longer than the model are cut, as the
pipeline's ``truncation=True`` cuts them); ``forward`` gives each row's float32 logits;
``decode`` applies the pipeline's score function to all finished rows at once, in numpy
float32 as the pipeline does, and keeps the ``top_k`` best labels (stable order on ties).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from jobs.engine.base import LoadOptions, ModelRequirement, Runner, TaskParams
from jobs.engine.batching import text_error
from jobs.engine.contract import Batch, Encoded, Finished, Item
from jobs.engine.loading import model_input_limit
from jobs.engine.model_task import ModelTask
from jobs.engine.staged import StagedRunner

FunctionName = Literal["default", "sigmoid", "softmax", "none"]
TEXT_PAIR = "text_pair"


class ClassificationParams(TaskParams):
    top_k: int | None = Field(1, ge=1, description="Labels per row, best first; null for every label.")
    function_to_apply: FunctionName = Field(
        "default", description="Score function: default (from the model config), sigmoid, softmax or none.")


class ClassificationTask(ModelTask):
    name = "classification"
    model_requirement = ModelRequirement("a sequence-classification model",
                                         "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
                                         head_weights=("classifier", "score"), needs_labels=True)
    optional_roles = (TEXT_PAIR,)
    auto_class = "AutoModelForSequenceClassification"
    Params = ClassificationParams
    default_model = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
    params: ClassificationParams

    def output_schema(self) -> pa.Schema:
        if self.params.top_k == 1:
            return pa.schema([pa.field("label", pa.string()), pa.field("score", pa.float64())])
        return pa.schema([pa.field("labels", pa.list_(label_struct()))])

    def runner(self, model: Any, tokenizer: Any, device: Any, options: LoadOptions) -> Runner:
        return ClassificationRunner(self, model, tokenizer, device)


def label_struct() -> pa.StructType:
    return pa.struct([pa.field("label", pa.string()), pa.field("score", pa.float64())])


def score_function(name: str, config: Any) -> str:
    """The pipeline's choice for ``function_to_apply: default``, from the model config."""
    if name != "default":
        return name
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    if config.problem_type == "single_label_classification" or config.num_labels > 1:
        return "softmax"
    return str(getattr(config, "function_to_apply", "none")).lower()


def apply_function(name: str, logits: np.ndarray) -> np.ndarray:
    """transformers' own numpy ``softmax`` / ``sigmoid`` over the last axis (float32 in, float32 out)."""
    if name == "softmax":
        shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if name == "none":
        return logits
    raise ValueError(f"unknown function_to_apply {name!r}")


class LogitsRunner(StagedRunner):
    """A sequence classifier on the engine: ``forward`` gives each item's float32 logits."""

    def __init__(self, schema: pa.Schema, model: Any, tokenizer: Any, device: Any) -> None:
        super().__init__(schema, device=device,
                         pad_id=tokenizer.pad_token_id or 0,
                         with_type_ids="token_type_ids" in tokenizer.model_input_names)
        self.model = model
        self.tokenizer = tokenizer
        self.limit = model_input_limit(tokenizer, model.config)
        self.no_cache = "use_cache" in inspect.signature(model.forward).parameters

    def forward(self, batch: Batch) -> Sequence[Any]:
        inputs = dict(batch.tensors)
        if self.no_cache:  # as the pipelines call sequence classifiers
            inputs["use_cache"] = False
        logits = self.model(**inputs).logits.float().cpu().numpy()
        return list(logits)


class ClassificationRunner(LogitsRunner):
    def __init__(self, task: ClassificationTask, model: Any, tokenizer: Any, device: Any) -> None:
        super().__init__(task.output_schema(), model, tokenizer, device)
        self.params = task.params
        self.function = score_function(task.params.function_to_apply, model.config)
        self.labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]

    def row_error(self, values: dict[str, Any]) -> str | None:
        return text_error(values["text"], "text")

    def row_length(self, values: dict[str, Any]) -> int:
        return len(values["text"]) + (len(values[TEXT_PAIR]) if isinstance(values.get(TEXT_PAIR), str) else 0)

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        pairs = inputs.get(TEXT_PAIR)
        errors: dict[int, str] = {}
        if pairs is not None:
            for row in rows:
                error = text_error(pairs[row], TEXT_PAIR)
                if error:
                    errors[row] = error
            rows = [row for row in rows if row not in errors]
        # An empty text_pair is no pair at all to the tokenizer's single-text call (what the pipeline makes)
        paired = [row for row in rows if pairs is not None and pairs[row]]
        alone = [row for row in rows if pairs is None or not pairs[row]]
        items = self._items(inputs, alone, None) + self._items(inputs, paired, pairs)
        return Encoded(items, errors)

    def _items(self, inputs: dict[str, list[Any]], rows: list[int], pairs: list[Any] | None) -> list[Item]:
        if not rows:
            return []
        second = [pairs[row] for row in rows] if pairs is not None else None
        encoded = self.tokenizer([inputs["text"][row] for row in rows], second, truncation=self.limit is not None,
                                 max_length=self.limit, return_attention_mask=False,
                                 return_token_type_ids=self.with_type_ids)
        type_ids = encoded.get("token_type_ids") if pairs is not None else None
        return [Item(row, encoded["input_ids"][i], None, type_ids[i] if type_ids is not None else None)
                for i, row in enumerate(rows)]

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        scores = apply_function(self.function, np.stack([outputs[0] for outputs in finished.outputs]))
        order = np.argsort(-scores, axis=-1, kind="stable")
        if self.params.top_k == 1:
            best = order[:, 0]
            return pa.table({"label": [self.labels[i] for i in best],
                             "score": np.take_along_axis(scores, best[:, None], axis=1)[:, 0].astype(np.float64)},
                            schema=self.schema)
        keep = order[:, : self.params.top_k] if self.params.top_k is not None else order
        column = [[{"label": self.labels[i], "score": float(row_scores[i])} for i in row_order]
                  for row_scores, row_order in zip(scores, keep, strict=True)]
        return pa.table({"labels": pa.array(column, type=pa.list_(label_struct()))}, schema=self.schema)
