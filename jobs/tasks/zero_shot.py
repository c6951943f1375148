"""Zero-shot classification, as ``pipeline("zero-shot-classification")`` gives it.

Every (row, candidate label) pair is one model item: the row as premise, the label in
``hypothesis_template`` as hypothesis, cut only in the premise (``only_first``, as the
pipeline does). The items of many rows and labels share length-sorted batches, so a shard
of 10,000 rows with 20 labels is 200,000 items in full batches, not 10,000 model calls.
``decode`` takes each row's entailment logits and normalises them as the pipeline: a
softmax over the labels, or with ``multi_label`` (or a single label) entailment against
contradiction per label; labels come back sorted by score, as the pipeline sorts them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from jobs.engine.base import CommaList, LoadOptions, ModelRequirement, Runner, TaskParams
from jobs.engine.contract import Encoded, Finished, Item
from jobs.engine.model_task import ModelTask
from jobs.tasks.classification import LogitsRunner

DEFAULT_TEMPLATE = "This example is {}."


class ZeroShotParams(TaskParams):
    candidate_labels: CommaList = Field(
        min_length=1, description="Labels to choose from (a list, or one comma-separated string).")
    hypothesis_template: str = Field(DEFAULT_TEMPLATE, description="NLI hypothesis; `{}` is replaced by the label.")
    multi_label: bool = Field(False, description="Score each label on its own (entailment vs contradiction).")

    @model_validator(mode="after")
    def _template_takes_a_label(self) -> ZeroShotParams:
        if self.hypothesis_template.format(self.candidate_labels[0]) == self.hypothesis_template:
            raise ValueError(f'hypothesis_template "{self.hypothesis_template}" has no {{}} for the label')
        return self


class ZeroShotTask(ModelTask):
    name = "zero_shot"
    model_requirement = ModelRequirement("a sequence-classification (NLI) model",
                                         "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
                                         head_weights=("classifier", "score"), needs_labels=True)
    auto_class = "AutoModelForSequenceClassification"
    Params = ZeroShotParams
    default_model = "facebook/bart-large-mnli"
    params: ZeroShotParams

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field("labels", pa.list_(pa.string())), pa.field("scores", pa.list_(pa.float64()))])

    def check_tokenizer(self, tokenizer: Any, options: LoadOptions) -> None:
        if tokenizer.pad_token is None:  # as the pipeline does
            tokenizer.pad_token = tokenizer.eos_token

    def runner(self, model: Any, tokenizer: Any, device: Any, options: LoadOptions) -> Runner:
        return ZeroShotRunner(self, model, tokenizer, device)


def entailment_id(label2id: dict[str, int]) -> int:
    """The pipeline's entailment label: the first starting with "entail", else -1 (the last)."""
    return next((index for label, index in label2id.items() if label.lower().startswith("entail")), -1)


class ZeroShotRunner(LogitsRunner):
    def __init__(self, task: ZeroShotTask, model: Any, tokenizer: Any, device: Any) -> None:
        super().__init__(task.output_schema(), model, tokenizer, device)
        self.params = task.params
        self.hypotheses = [task.params.hypothesis_template.format(label) for label in task.params.candidate_labels]
        self.entailment = entailment_id(model.config.label2id)

    def row_error(self, values: dict[str, Any]) -> str | None:
        error = super().row_error(values)
        if error is None and not values["text"]:
            return "text cannot be empty (the pipeline needs at least one sequence)"
        return error

    def row_length(self, values: dict[str, Any]) -> int:
        return len(values["text"]) * len(self.hypotheses)

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        labels = len(self.hypotheses)
        premises = [inputs["text"][row] for row in rows for _ in range(labels)]
        hypotheses = self.hypotheses * len(rows)
        try:
            encoded = self._tokenize(premises, hypotheses, "only_first")
        except Exception as exc:  # a hypothesis longer than the model: the pipeline then does not truncate
            if "too short" not in str(exc):
                raise
            encoded = None
        items: list[Item] = []
        for index, row in enumerate(rows):
            if encoded is None:
                ids, types = self._one_row(premises[index * labels], hypotheses[:labels])
            else:
                span = slice(index * labels, (index + 1) * labels)
                ids = encoded["input_ids"][span]
                types = encoded["token_type_ids"][span] if "token_type_ids" in encoded else [None] * labels
            items += [Item(row, ids[n], None, types[n], n, labels) for n in range(labels)]
        return Encoded(items)

    def _tokenize(self, premises: list[str], hypotheses: list[str], truncation: str | bool) -> Any:
        return self.tokenizer(premises, hypotheses, truncation=truncation, return_attention_mask=False,
                              return_token_type_ids=self.with_type_ids)

    def _one_row(self, premise: str, hypotheses: list[str]) -> tuple[list[Any], list[Any]]:
        """One row's pairs, each cut only_first when that works and kept whole when it cannot be cut."""
        ids, types = [], []
        for hypothesis in hypotheses:
            try:
                encoded = self._tokenize([premise], [hypothesis], "only_first")
            except Exception as exc:
                if "too short" not in str(exc):
                    raise
                encoded = self._tokenize([premise], [hypothesis], False)
            ids.append(encoded["input_ids"][0])
            types.append(encoded["token_type_ids"][0] if "token_type_ids" in encoded else None)
        return ids, types

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        logits = np.stack([np.stack(outputs) for outputs in finished.outputs])  # rows x labels x classes
        labels = self.params.candidate_labels
        if self.params.multi_label or len(labels) == 1:
            contradiction = -1 if self.entailment == 0 else 0
            pair = logits[..., [contradiction, self.entailment]]
            scores = (np.exp(pair) / np.exp(pair).sum(-1, keepdims=True))[..., 1]
        else:
            entail = logits[..., self.entailment]
            scores = np.exp(entail) / np.exp(entail).sum(-1, keepdims=True)
        names, values = [], []
        for row_scores in scores:
            order = list(reversed(row_scores.argsort()))  # the pipeline's order, ties included
            names.append([labels[i] for i in order])
            values.append(row_scores[order].tolist())
        return pa.table({"labels": pa.array(names, pa.list_(pa.string())),
                         "scores": pa.array(values, pa.list_(pa.float64()))}, schema=self.schema)
