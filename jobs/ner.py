"""Named-entity recognition (token classification), as ``pipeline("token-classification")`` gives it.

Tokenization is one batched fast-tokenizer call per batch of rows, chunks are
length-sorted into padded model batches, and the entities are then built by the
transformers pipeline's own post-processing (``gather_pre_entities``,
``aggregate``, overlap resolution), so they are exactly the pipeline's.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from jobs.base import LoadOptions, ProgressCallback, Runner, TaskParams, TaskType
from jobs.batching import length_sorted_batches, text_error
from jobs.errors import ModelLoadError
from jobs.runtime import load_model, load_tokenizer

AggregationName = Literal["none", "simple", "first", "average", "max"]
TOKENIZE_ROWS = 256


class NerParams(TaskParams):
    aggregation_strategy: AggregationName = Field("none", description="How tokens are grouped into entities.")
    ignore_labels: list[str] = Field(default_factory=lambda: ["O"], description="Labels dropped from the output.")
    stride: int | None = Field(None, gt=0, description="Overlap in tokens between chunks of a long text.")

    @model_validator(mode="after")
    def _stride_needs_aggregation(self) -> NerParams:
        if self.stride is not None and self.aggregation_strategy == "none":
            raise ValueError('stride needs an aggregation_strategy other than "none" (as in transformers)')
        return self


class NerTask(TaskType):
    name = "ner"
    input_roles = ("text",)
    Params = NerParams
    default_model = "dbmdz/bert-large-cased-finetuned-conll03-english"
    params: NerParams

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field("entities", pa.list_(entity_struct(self.params.aggregation_strategy)))])

    def load(self, options: LoadOptions) -> Runner:
        from transformers import AutoModelForTokenClassification

        tokenizer = load_tokenizer(options)
        if not tokenizer.is_fast:
            raise ModelLoadError(f"{options.model}: NER needs a fast tokenizer (offsets)")
        model, device = load_model(AutoModelForTokenClassification, options)
        if self.params.stride is not None and self.params.stride >= tokenizer.model_max_length:
            raise ModelLoadError(
                f"params.stride ({self.params.stride}) must be less than the tokenizer's "
                f"model_max_length ({tokenizer.model_max_length})"
            )
        return NerRunner(self.params, model, tokenizer, device, options)


def entity_struct(aggregation: str) -> pa.DataType:
    label = "entity" if aggregation == "none" else "entity_group"
    fields = [
        pa.field(label, pa.string()),
        pa.field("score", pa.float64()),
        pa.field("word", pa.string()),
        pa.field("start", pa.int64()),
        pa.field("end", pa.int64()),
    ]
    if aggregation == "none":
        fields.insert(2, pa.field("index", pa.int64()))
    return pa.struct(fields)


class NerRunner(Runner):
    def __init__(self, params: NerParams, model: Any, tokenizer: Any, device: Any, options: LoadOptions) -> None:
        from transformers import TokenClassificationPipeline
        from transformers.pipelines.token_classification import AggregationStrategy

        self.params = params
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.options = options
        # Only its post-processing is used: it is the reference behaviour.
        self.postprocessor = TokenClassificationPipeline(model=model, tokenizer=tokenizer, device=device)
        self.strategy = AggregationStrategy[params.aggregation_strategy.upper()]

    def run(self, inputs: dict[str, list[Any]], progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
        texts = inputs["text"]
        results: list[dict[str, Any]] = [{"entities": None, "error": text_error(t)} for t in texts]
        todo = [i for i, text in enumerate(texts) if results[i]["error"] is None]
        for start in range(0, len(todo), TOKENIZE_ROWS):
            rows = todo[start : start + TOKENIZE_ROWS]
            for row, entities in zip(rows, self._entities([texts[i] for i in rows]), strict=True):
                results[row]["entities"] = entities
            if progress:
                progress(len(rows))
        if progress and len(todo) < len(texts):
            progress(len(texts) - len(todo))
        return results

    def _entities(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        """Entities of each text: tokenize together, run length-sorted, post-process per text."""
        import torch

        encoded = self._tokenize(texts)
        chunk_rows = encoded.get("overflow_to_sample_mapping") or list(range(len(texts)))
        lengths = [len(ids) for ids in encoded["input_ids"]]
        logits: list[Any] = [None] * len(lengths)
        pad_id = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for batch in length_sorted_batches(lengths, self.options.batch_size, self.options.max_batch_tokens):
                longest = max(lengths[i] for i in batch)
                ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), longest), dtype=torch.long)
                for row, chunk in enumerate(batch):
                    ids[row, : lengths[chunk]] = torch.tensor(encoded["input_ids"][chunk])
                    mask[row, : lengths[chunk]] = 1
                model_inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
                if "token_type_ids" in encoded and "token_type_ids" in self.tokenizer.model_input_names:
                    types = torch.zeros((len(batch), longest), dtype=torch.long)
                    for row, chunk in enumerate(batch):
                        types[row, : lengths[chunk]] = torch.tensor(encoded["token_type_ids"][chunk])
                    model_inputs["token_type_ids"] = types.to(self.device)
                output = self.model(**model_inputs).logits.float().cpu()
                for row, chunk in enumerate(batch):
                    logits[chunk] = output[row, : lengths[chunk]]
        chunks_of: list[list[int]] = [[] for _ in texts]
        for chunk, row in enumerate(chunk_rows):
            chunks_of[row].append(chunk)
        return [self._postprocess(texts[row], chunks, encoded, logits) for row, chunks in enumerate(chunks_of)]

    def _tokenize(self, texts: list[str]) -> Any:
        max_length = self.tokenizer.model_max_length
        kwargs: dict[str, Any] = {
            "truncation": bool(max_length and max_length > 0),
            "return_special_tokens_mask": True,
            "return_offsets_mapping": True,
        }
        if self.params.stride is not None:
            kwargs.update(return_overflowing_tokens=True, stride=self.params.stride)
        return self.tokenizer(texts, **kwargs)

    def _postprocess(self, text: str, chunks: list[int], encoded: Any, logits: list[Any]) -> list[dict[str, Any]]:
        import torch

        outputs = [
            {
                "logits": logits[chunk].unsqueeze(0),
                "input_ids": torch.tensor([encoded["input_ids"][chunk]]),
                "offset_mapping": torch.tensor([encoded["offset_mapping"][chunk]]),
                "special_tokens_mask": torch.tensor([encoded["special_tokens_mask"][chunk]]),
                "sentence": text if n == 0 else None,
                "is_last": n == len(chunks) - 1,
            }
            for n, chunk in enumerate(chunks)
        ]
        entities = self.postprocessor.postprocess(
            outputs, aggregation_strategy=self.strategy, ignore_labels=self.params.ignore_labels
        )
        return [_plain(entity) for entity in entities]


def _plain(entity: dict[str, Any]) -> dict[str, Any]:
    """Numpy scalars to Python values, so Arrow and JSON take them."""
    return {key: (value.item() if hasattr(value, "item") else value) for key, value in entity.items()}
