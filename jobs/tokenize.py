"""Tokenization: one batched fast-tokenizer call per batch, columns built without row loops."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from jobs.base import LoadOptions, ProgressCallback, Runner, TaskParams, TaskType
from jobs.batching import text_error
from jobs.runtime import load_tokenizer

TOKENIZE_BATCH_ROWS = 1024


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
        encodings: list[Any] = [None] * len(texts)
        for start in range(0, len(valid), TOKENIZE_BATCH_ROWS):
            rows = valid[start : start + TOKENIZE_BATCH_ROWS]
            batch = self.tokenizer(
                [texts[i] for i in rows],
                add_special_tokens=self.task.params.add_special_tokens,
                truncation=self.task.params.truncation,
                max_length=self.task.params.max_length,
                stride=self.task.params.stride,
            )
            for row, encoding in zip(rows, batch.encodings, strict=True):
                encodings[row] = encoding
            if progress:
                progress(len(rows))
        if progress and len(valid) < len(texts):
            progress(len(texts) - len(valid))
        return self._table(encodings, errors)

    def _table(self, encodings: list[Any], errors: list[str | None]) -> pa.Table:
        present = [e for e in encodings if e is not None]
        counts = np.array([len(e.ids) if e is not None else 0 for e in encodings], dtype=np.int32)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        nulls = pa.array([e is None for e in encodings])
        ids = _flat([e.ids for e in present], np.int32)
        mask = _flat([e.attention_mask for e in present], np.int8)
        word_ids = pa.array([w for e in present for w in e.word_ids], type=pa.int32())
        spans = _flat([e.offsets for e in present], np.int32).reshape(-1)
        pairs = pa.FixedSizeListArray.from_arrays(pa.array(spans, type=pa.int32()), 2)
        offsets_array = pa.array(offsets)
        columns = [
            pa.ListArray.from_arrays(offsets_array, pa.array(ids), mask=nulls),
            pa.ListArray.from_arrays(offsets_array, pa.array(mask), mask=nulls),
            pa.ListArray.from_arrays(offsets_array, pairs, mask=nulls),
            pa.ListArray.from_arrays(offsets_array, word_ids, mask=nulls),
            pa.array(counts, mask=np.asarray(nulls)),
            pa.array(errors, type=pa.string()),
        ]
        return pa.Table.from_arrays(columns, schema=self.schema)


def _flat(rows: list[Any], dtype: Any) -> np.ndarray:
    if not rows:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if rows else np.zeros(0, dtype=dtype)
