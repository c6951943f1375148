"""Named-entity recognition (token classification), as ``pipeline("token-classification")`` gives it.

Tokenization is one batched fast-tokenizer call per ``TOKENIZE_ROWS`` rows; the
chunks of the whole shard are length-sorted into padded model batches (within
``batch_size`` rows and ``max_batch_tokens``), and each text's entities are built,
as soon as its last chunk is through the model, by the transformers pipeline's own
post-processing (``gather_pre_entities``, ``aggregate``, overlap resolution), so
they are exactly the pipeline's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from jobs.base import LoadOptions, ProgressCallback, Runner, TaskParams, TaskType
from jobs.batching import RowOutOfMemory, length_sorted_batches, run_splitting_on_oom, text_error
from jobs.errors import ModelLoadError
from jobs.runtime import load_model, load_tokenizer

AggregationName = Literal["none", "simple", "first", "average", "max"]
TOKENIZE_ROWS = 1024
"""Rows per tokenizer call; the chunks of the whole shard are then length-sorted together."""


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
        self.pad_id = tokenizer.pad_token_id or 0
        self.with_types = "token_type_ids" in tokenizer.model_input_names

    def run(self, inputs: dict[str, list[Any]], progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
        """Tokenize every row, run all chunks of the shard length-sorted, post-process each row
        as soon as its last chunk is through the model.

        A batch that runs out of GPU memory is split and run again; a text with a
        chunk that does not fit even alone gets an error instead of entities.
        """
        import torch

        texts = inputs["text"]
        results: list[dict[str, Any]] = [{"entities": None, "error": text_error(t)} for t in texts]
        todo = [i for i, text in enumerate(texts) if results[i]["error"] is None]
        if progress and len(todo) < len(texts):
            progress(len(texts) - len(todo))
        chunks = self._chunks([texts[i] for i in todo])
        lengths = [len(chunk.ids) for chunk in chunks]
        waiting = [0] * len(todo)
        for chunk in chunks:
            waiting[chunk.row] += 1
        chunks_of: list[list[_Chunk]] = [[] for _ in todo]
        with torch.inference_mode():
            for batch in length_sorted_batches(lengths, self.options.batch_size, self.options.max_batch_tokens):
                finished = []
                for index, logits in zip(batch, run_splitting_on_oom(self._forward(chunks, lengths), batch),
                                         strict=True):
                    chunk = chunks[index]
                    chunk.logits = logits
                    chunks_of[chunk.row].append(chunk)
                    waiting[chunk.row] -= 1
                    if waiting[chunk.row] == 0:
                        finished.append(chunk.row)
                for position in finished:
                    row = todo[position]
                    own = sorted(chunks_of[position], key=lambda c: c.order)
                    chunks_of[position] = []
                    failed = next((c.logits for c in own if isinstance(c.logits, RowOutOfMemory)), None)
                    if failed is not None:
                        results[row]["error"] = failed.message
                    else:
                        results[row]["entities"] = self._postprocess(texts[row], own)
                if progress and finished:
                    progress(len(finished))
        return results

    def _chunks(self, texts: list[str]) -> list[_Chunk]:
        """Tokenize ``TOKENIZE_ROWS`` texts per call; each chunk (overflow window) of each text."""
        max_length = self.tokenizer.model_max_length
        kwargs: dict[str, Any] = {
            "truncation": bool(max_length and max_length > 0),
            "return_special_tokens_mask": True,
            "return_offsets_mapping": True,
            "return_attention_mask": False,
            "return_token_type_ids": self.with_types,
        }
        if self.params.stride is not None:
            kwargs.update(return_overflowing_tokens=True, stride=self.params.stride)
        chunks: list[_Chunk] = []
        for first in range(0, len(texts), TOKENIZE_ROWS):
            encoded = self.tokenizer(texts[first : first + TOKENIZE_ROWS], **kwargs)
            owners = encoded.get("overflow_to_sample_mapping") or range(len(encoded["input_ids"]))
            types = encoded.get("token_type_ids")
            for index, owner in enumerate(owners):
                chunks.append(_Chunk(
                    row=first + owner,
                    order=len(chunks),
                    ids=encoded["input_ids"][index],
                    type_ids=types[index] if types is not None else None,
                    offsets=encoded["offset_mapping"][index],
                    special=encoded["special_tokens_mask"][index],
                ))
        return chunks

    def _forward(self, chunks: list[_Chunk], lengths: list[int]) -> Any:
        """A function running one batch of chunks, padded, and returning each chunk's float32 logits."""
        import numpy as np
        import torch

        def forward(batch: list[int]) -> list[Any]:
            longest = max(lengths[i] for i in batch)
            ids = np.full((len(batch), longest), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), longest), dtype=np.int64)
            types = np.zeros((len(batch), longest), dtype=np.int64) if self.with_types else None
            for row, index in enumerate(batch):
                n = lengths[index]
                ids[row, :n] = chunks[index].ids
                mask[row, :n] = 1
                type_ids = chunks[index].type_ids
                if types is not None and type_ids is not None:
                    types[row, :n] = type_ids
            model_inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
            if types is not None:
                model_inputs["token_type_ids"] = torch.from_numpy(types)
            model_inputs = {name: tensor.to(self.device) for name, tensor in model_inputs.items()}
            output = self.model(**model_inputs).logits.float().cpu()
            return [output[row, : lengths[index]] for row, index in enumerate(batch)]

        return forward

    def _postprocess(self, text: str, chunks: list[_Chunk]) -> list[dict[str, Any]]:
        """The pipeline's own post-processing. Ids and offsets go in as Python lists, which it
        reads token by token far faster than tensors; the values are the same."""
        import torch

        outputs = [
            {
                "logits": chunk.logits.unsqueeze(0),
                "input_ids": [chunk.ids],
                "offset_mapping": [chunk.offsets],
                "special_tokens_mask": torch.tensor([chunk.special]),
                "sentence": text if n == 0 else None,
                "is_last": n == len(chunks) - 1,
            }
            for n, chunk in enumerate(chunks)
        ]
        entities = self.postprocessor.postprocess(
            outputs, aggregation_strategy=self.strategy, ignore_labels=self.params.ignore_labels
        )
        return [_plain(entity) for entity in entities]


@dataclass
class _Chunk:
    """One model row: a text, or one overflow window of a long text with ``stride``."""

    row: int  # position of its text in the runner's valid rows
    order: int  # position among all chunks: a text's chunks in reading order
    ids: list[int]
    type_ids: list[int] | None
    offsets: list[tuple[int, int]]
    special: list[int]
    logits: Any = None  # float32 tensor (tokens, labels) once through the model, or RowOutOfMemory


def _plain(entity: dict[str, Any]) -> dict[str, Any]:
    """Numpy scalars to Python values, so Arrow and JSON take them."""
    return {key: (value.item() if hasattr(value, "item") else value) for key, value in entity.items()}
