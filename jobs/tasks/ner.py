"""Named-entity recognition (token classification), as ``pipeline("token-classification")`` gives it.

Stages on :mod:`jobs.engine.staged`: ``encode`` is one batched fast-tokenizer call per block of
rows (each overflow window of a long text with ``stride`` is an item); ``forward`` gives
each item's float32 logits; ``decode`` rebuilds the pipeline's post-processing on arrays
for all finished rows at once (:mod:`jobs.tasks.ner_decode`): softmax, argmax, words, groups and
the five aggregation strategies, with the entity words joined by the tokenizer's own
decoder, only for the entities that are kept. The pipeline's code stays the reference in
the tests.

A text longer than the model without ``stride`` is cut, as the pipeline cuts it; the
``truncated`` column says so (``stride`` keeps the whole text).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from jobs.engine.base import LoadOptions, ModelRequirement, Runner, RunOptions, TaskParams
from jobs.engine.contract import Batch, Encoded, Finished, Item
from jobs.engine.loading import model_input_limit
from jobs.engine.model_task import ModelTask
from jobs.engine.staged import StagedRunner
from jobs.errors import ModelLoadError
from jobs.tasks.ner_decode import EntityDecoder, entity_struct

AggregationName = Literal["none", "simple", "first", "average", "max"]


class NerParams(TaskParams):
    aggregation_strategy: AggregationName = Field("none", description="How tokens are grouped into entities.")
    ignore_labels: list[str] = Field(default_factory=lambda: ["O"], description="Labels dropped from the output.")
    stride: int | None = Field(None, gt=0, description="Overlap in tokens between chunks of a long text.")

    @model_validator(mode="after")
    def _stride_needs_aggregation(self) -> NerParams:
        if self.stride is not None and self.aggregation_strategy == "none":
            raise ValueError('stride needs an aggregation_strategy other than "none" (as in transformers)')
        return self


class NerTask(ModelTask):
    name = "ner"
    model_requirement = ModelRequirement("a token-classification model", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
                                         head_weights=("classifier", "score"), needs_labels=True)
    auto_class = "AutoModelForTokenClassification"
    needs_fast_tokenizer = "NER needs a fast tokenizer (offsets)"
    Params = NerParams
    default_model = "dbmdz/bert-large-cased-finetuned-conll03-english"
    params: NerParams

    def output_schema(self) -> pa.Schema:
        return pa.schema([
            pa.field("entities", pa.list_(entity_struct(self.params.aggregation_strategy))),
            pa.field("truncated", pa.bool_()),
        ])

    def runner(self, model: Any, tokenizer: Any, device: Any, options: LoadOptions) -> Runner:
        limit = model_input_limit(tokenizer, model.config)
        if self.params.stride is not None and limit is not None and self.params.stride >= limit:
            raise ModelLoadError(
                f"params.stride ({self.params.stride}) must be less than the model's input length ({limit})"
            )
        return NerRunner(self, model, tokenizer, device, limit)


class NerRunner(StagedRunner):
    def __init__(self, task: NerTask, model: Any, tokenizer: Any, device: Any, limit: int | None,
                 options: RunOptions | None = None) -> None:
        with_types = "token_type_ids" in tokenizer.model_input_names
        # Single texts have all-zero type ids with every usual template; then the engine makes them.
        self.own_type_ids = with_types and any(tokenizer("a b", return_token_type_ids=True)["token_type_ids"])
        super().__init__(task.output_schema(), options, device,
                         pad_id=tokenizer.pad_token_id or 0, with_type_ids=with_types)
        self.params = task.params
        self.model = model
        self.tokenizer = tokenizer
        self.limit = limit
        self.entities = EntityDecoder(tokenizer, model.config.id2label, task.params.aggregation_strategy,
                                      task.params.ignore_labels)
        self.kwargs: dict[str, Any] = {
            "truncation": limit is not None,
            "max_length": limit,
            "return_attention_mask": False,
            "return_token_type_ids": False,
        }
        if task.params.stride is not None:
            self.kwargs.update(return_overflowing_tokens=True, stride=task.params.stride)

    def encode(self, inputs: dict[str, list[Any]], rows: list[int]) -> Encoded:
        texts = inputs["text"]
        encoded = self.tokenizer([texts[row] for row in rows], **self.kwargs)
        owners = encoded.get("overflow_to_sample_mapping") or range(len(rows))
        parts = [0] * len(rows)
        for owner in owners:
            parts[owner] += 1
        seen = [0] * len(rows)
        items = []
        for encoding, ids, owner in zip(encoded.encodings, encoded["input_ids"], owners, strict=True):
            items.append(Item(rows[owner], ids, encoding, encoding.type_ids if self.own_type_ids else None,
                              seen[owner], parts[owner]))
            seen[owner] += 1
        return Encoded(items)

    def forward(self, batch: Batch) -> Sequence[Any]:
        logits = self.model(**batch.tensors).logits.float().cpu().numpy()
        return [logits[i, : len(item.ids)] for i, item in enumerate(batch.items)]

    def decode(self, inputs: dict[str, list[Any]], finished: Finished) -> pa.Table:
        texts = [inputs["text"][row] for row in finished.rows]
        entities = self.entities.decode(texts, finished.items, finished.outputs)
        truncated = [self.params.stride is None and bool(items[0].data.overflowing) for items in finished.items]
        return pa.Table.from_arrays([entities, pa.array(truncated, type=pa.bool_())],
                                    schema=self.schema)
