"""Tokenization: one batched fast-tokenizer call per batch, columns built without row loops."""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from jobs.base import LoadOptions, ProgressCallback, Runner, TaskParams, TaskType
from jobs.batching import text_error
from jobs.runtime import load_tokenizer

TOKENIZE_BATCH_ROWS = 4096


class TokenizeParams(TaskParams):
    """The tokenizer's usual call arguments."""

    add_special_tokens: bool = Field(True, description="Add [CLS]/[SEP] or the model's equivalents.")
    truncation: bool | str = Field(False, description="True, 'longest_first', 'only_first', ... or False.")
    max_length: int | None = Field(None, gt=0, description="Truncate to this many tokens (with truncation).")
    stride: int = Field(0, ge=0, description="Overlap kept when truncating (as in transformers).")


class TokenizeTask(TaskType):
    name = "tokenize"
    input_roles = ("text",)
    Params = TokenizeParams
    default_model = "bert-base-cased"
    params: TokenizeParams

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("input_ids", pa.list_(pa.int32())),
                pa.field("attention_mask", pa.list_(pa.int8())),
                pa.field("offset_mapping", pa.list_(pa.list_(pa.int32(), 2))),
                pa.field("word_ids", pa.list_(pa.int32())),
                pa.field("num_tokens", pa.int32()),
            ]
        )

    def load(self, options: LoadOptions) -> Runner:
        return TokenizeRunner(self, load_tokenizer(options))


class TokenizeRunner(Runner):
    def __init__(self, task: TokenizeTask, tokenizer: Any) -> None:
        self.task = task
        self.tokenizer = tokenizer
        self.schema = task.output_schema().append(pa.field("error", pa.string()))

    def run(self, inputs: dict[str, list[Any]], progress: ProgressCallback | None = None) -> pa.Table:  # type: ignore[override]
        texts = inputs["text"]
        errors = [text_error(t) for t in texts]
        valid = [i for i, error in enumerate(errors) if error is None]
        ids: list[list[int]] = []
        offsets: list[list[tuple[int, int]]] = []
        word_ids: list[list[int | None]] = []
        for start in range(0, len(valid), TOKENIZE_BATCH_ROWS):
            rows = valid[start : start + TOKENIZE_BATCH_ROWS]
            batch = self.tokenizer(
                [texts[i] for i in rows],
                add_special_tokens=self.task.params.add_special_tokens,
                truncation=self.task.params.truncation,
                max_length=self.task.params.max_length,
                stride=self.task.params.stride,
                return_attention_mask=False,  # all ones without padding: built below as one array
                return_token_type_ids=False,
            )
            ids.extend(batch["input_ids"])
            offsets.extend([encoding.offsets for encoding in batch.encodings])
            word_ids.extend([encoding.word_ids for encoding in batch.encodings])
            if progress:
                progress(len(rows))
        if progress and len(valid) < len(texts):
            progress(len(texts) - len(valid))
        return self._table(valid, ids, offsets, word_ids, errors)

    def _table(
        self,
        valid: list[int],
        ids: list[list[int]],
        offsets: list[list[tuple[int, int]]],
        word_ids: list[list[int | None]],
        errors: list[str | None],
    ) -> pa.Table:
        """Arrow columns from the flattened token lists, with no Python loop over tokens."""
        counts = np.zeros(len(errors), dtype=np.int32)
        counts[valid] = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
        total = int(counts.sum())
        list_offsets = pa.array(np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int32))
        nulls = pa.array([error is not None for error in errors])
        flat_ids = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=total)
        spans = np.fromiter(chain.from_iterable(chain.from_iterable(offsets)), dtype=np.int32, count=2 * total)
        pairs = pa.FixedSizeListArray.from_arrays(pa.array(spans, type=pa.int32()), 2)
        words = pa.array(list(chain.from_iterable(word_ids)), type=pa.int32())  # None (special tokens) -> null
        columns = [
            pa.ListArray.from_arrays(list_offsets, pa.array(flat_ids), mask=nulls),
            pa.ListArray.from_arrays(list_offsets, pa.array(np.ones(total, dtype=np.int8)), mask=nulls),
            pa.ListArray.from_arrays(list_offsets, pairs, mask=nulls),
            pa.ListArray.from_arrays(list_offsets, words, mask=nulls),
            pa.array(counts, mask=np.asarray(nulls)),
            pa.array(errors, type=pa.string()),
        ]
        return pa.Table.from_arrays(columns, schema=self.schema)
